"""Data parallelism (`llgbm_jax.utils.mesh`) on 8 forced host devices, each checked against one device: the
generator's training step (ΔW, + behavioural, + end to end) and the teacher trainer (loss and parameters within
1e-5), scoring (option scores
within 1e-5, the same choices, the same generated texts); and two processes of 4 devices each, their collectives
through gloo (`llgbm_jax.utils.distributed`), against one process of 8 (ΔW generator steps, scores, generations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.utils.distributed import ENV, initialize
from llgbm_jax.utils.mesh import data_devices

from test_dataset import write_zoo

# Runs in a process with 8 CPU devices (XLA_FLAGS must be set before JAX starts): trains the same generator with
# its batch on 1 and on 8 devices and saves each run's loss history and parameters.
EIGHT_DEVICES = textwrap.dedent("""
    import json, sys, zlib
    import jax, numpy as np
    from flax import nnx
    from llgbm_jax.base import load_base_model
    from llgbm_jax.conditions.deltas import probe_hidden
    from llgbm_jax.conditions.probes import build_probes
    from llgbm_jax.generator.config import TrainingConfig
    from llgbm_jax.generator.dataset import RealAdapterDataset
    from llgbm_jax.generator.losses import DeltaInputs
    from llgbm_jax.generator.model import create_generator
    from llgbm_jax.generator.training import train
    from llgbm_jax.teachers.manifest import read_zoo

    zoo, out, folder = sys.argv[1:4]
    distributed = len(sys.argv) > 4  # coordinator address, process id: 2 processes of 4 devices
    if distributed:
        from llgbm_jax.utils.distributed import initialize
        assert initialize(sys.argv[4], 2, int(sys.argv[5]))
    assert jax.device_count() == 8
    from llgbm_jax.utils.mesh import data_devices
    assert data_devices(8) == 8 and data_devices(12) == 4  # the default: gcd(batch size, devices)
    model = load_base_model(folder)
    mc = model.config
    embed = lambda texts: np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=384)
                                    for t in texts]).astype(np.float32)
    # The behavioural loss: the base model's arrays and 4 probes, a made-up teacher delta per adapter.
    probes = build_probes(model, 4, 48, 0, tasks=("fam_add_2",))
    delta = DeltaInputs(model.params, probes.ids, probes.mask, probe_hidden(model, probes))
    teacher_deltas = {a.name: np.random.default_rng(i).normal(size=mc.hidden_size).astype(np.float32) * 0.01
                      for i, a in enumerate(read_zoo(zoo))}
    from llgbm_jax.generator.sft_data import SFTData
    sft = SFTData(model, [a.task for a in read_zoo(zoo)], rows=2, max_seq_len=96, max_examples=16)
    modes = (("delta_w", (1.0, 0.0, 0.0)),)
    if not distributed:  # ΔW + behavioural, ΔW + end to end (one process only: ΔW's program shows the 2-process path)
        modes += (("multitask", (1.0, 1.0, 0.0)), ("sft+delta_w", (1.0, 0.0, 1.0)))
    for mode, lambdas in modes:
        for n in ((8,) if distributed else (1, 8)):
            name = f"{mode}{n}" + (f"-process{jax.process_index()}" if distributed else "")
            cfg = TrainingConfig(batch_size=8, num_steps=3, warmup_steps=1, lora_rank=4, lora_alpha=8.0,
                                 generator_hidden=32, embedding_dim=8, num_prompts_per_adapter=4,
                                 teacher_checkpoints="all", lambda_weight=lambdas[0], lambda_delta=lambdas[1],
                                 lambda_sft=lambdas[2], sft_rows=2, sft_max_seq_len=96,
                                 num_probes=4, delta_batch_probes=4, data_parallel_devices=n,
                                 checkpoint_dir=f"{out}/ckpt-{mode}{n}" + ("d" if distributed else ""))
            dataset = RealAdapterDataset(zoo, mc, num_prompts_per_adapter=4, embed=embed, checkpoints="all",
                                         teacher_deltas=teacher_deltas)
            gen = create_generator(cfg, 0, model_config=mc)
            state = train(gen, dataset, cfg, model_config=mc, show_progress=False,
                          delta=delta if lambdas[1] or lambdas[2] else None, sft=sft if lambdas[2] else None)
            leaves = jax.tree_util.tree_leaves(nnx.state(gen, nnx.Param))
            assert all(len(x.sharding.device_set) == n for x in leaves)  # trained on n devices
            params = jax.tree_util.tree_leaves(nnx.to_pure_dict(nnx.state(gen, nnx.Param)))
            np.savez(f"{out}/params-{name}.npz", *[np.asarray(p) for p in params])
            json.dump(state.loss_history, open(f"{out}/loss-{name}.json", "w"))

    # Scoring and generation with each batch split over all 8 devices (of one or of two processes).
    from llgbm_jax.scoring.accuracy import generate_texts, score_options
    from llgbm_jax.tasks.registry import get_task
    task = get_task("fam_add_2")
    evals = task.load("eval")[:16]
    prompts = [task.format_prompt(r, model) for r in evals]
    scores, _ = score_options(model, prompts, [task.options(r) for r in evals], batch_size=8, devices=8)
    texts = generate_texts(model, prompts, batch_size=8, max_new_tokens=4, devices=8)
    name = f"8-process{jax.process_index()}" if distributed else 8
    json.dump({"scores": [x.tolist() for x in scores], "texts": texts}, open(f"{out}/scores{name}.json", "w"))
""")


# Teacher training and scoring on 1 and on 8 devices (a tiny random Llama with SmolLM2's tokenizer, a family task).
TEACHER_AND_SCORING = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from llgbm_jax.base import load_base_model
    from llgbm_jax.scoring.accuracy import generate_texts, score_options
    from llgbm_jax.tasks.registry import get_task
    from llgbm_jax.teachers.run import TeacherConfig, train_run

    folder, out = sys.argv[1], sys.argv[2]
    assert jax.device_count() == 8
    model = load_base_model(folder)
    task = get_task("fam_add_2")
    evals = task.load("eval")[:16]
    prompts = [task.format_prompt(r, model) for r in evals]
    options = [task.options(r) for r in evals]
    cfg = TeacherConfig(steps=3, warmup_steps=1, save_every=1, adapters_per_run=1, batch_size=8, max_seq_len=96,
                        checkpoint_every=3, learning_rate=5e-3, remat=False)
    for n in (1, 8):
        got = {}
        def keep(lora, path, metrics):
            got["devices"] = {len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(lora)}
            got["lora"] = jax.tree_util.tree_map(np.asarray, lora)
        run = train_run(model, task, task.load("train")[:64], cfg, f"{out}/run{n}", seed=0, show_progress=False,
                        data_parallel_devices=n, on_adapter=keep)
        assert got["devices"] == {n}, got["devices"]  # trained on n devices
        lora = got["lora"]
        per_question = jax.tree_util.tree_map(lambda x: np.stack([x * (1 + i / 16) for i in range(16)]), lora)
        scores = {name: [s.tolist() for s in score_options(model, prompts, options, adapter, batch_size=8,
                                                            devices=n)[0]]
                  for name, adapter in (("base", None), ("one", lora), ("per_question", per_question))}
        texts = generate_texts(model, prompts, per_question, batch_size=8, max_new_tokens=6, devices=n)
        np.savez(f"{out}/teacher{n}.npz", *jax.tree_util.tree_leaves(lora))
        json.dump({"loss": run.history["loss"], "scores": scores, "texts": texts}, open(f"{out}/result{n}.json", "w"))
""")


def run_with_devices(script: str, args, devices: int):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout: int = 600):
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def assert_same_arrays(a, b, atol=1e-5):
    """Parameters within 1e-5. Adam divides by the gradient's running RMS: where a gradient is near zero, the
    reduction order's 1e-7 differences move an entry by a few 1e-6 (seen: 3.4e-6 on one of 512 teacher entries
    after 3 steps at lr 5e-3, 3.0e-6 on two of 12288 generator entries with the behavioural loss)."""
    assert len(a.files) == len(b.files) > 4
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=atol)


def test_data_devices_divide_the_batch():
    assert data_devices(4) == 1  # one local device here
    assert data_devices(4, 1) == 1
    with pytest.raises(ValueError, match="must divide the batch size 4 and be at most the 1 device"):
        data_devices(4, 2)
    with pytest.raises(ValueError, match="data_parallel_devices=3: must be None or a positive divisor of batch_size=4"):
        TrainingConfig(batch_size=4, data_parallel_devices=3)


def test_distributed_start_needs_all_three_settings(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    assert initialize() is False  # nothing asks for it: one process
    with pytest.raises(ValueError, match="missing number of processes and process id .*--num-processes"):
        initialize("localhost:1234")
    monkeypatch.setenv("LLGBM_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="LLGBM_NUM_PROCESSES='two': expected an integer"):
        initialize("localhost:1234", process_id=0)
    monkeypatch.setenv("LLGBM_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="process id 2 is not in 0..1"):
        initialize("localhost:1234", process_id=2)


def test_generator_training_on_8_devices_equals_one(tmp_path, tiny_folder):
    zoo = write_zoo(tmp_path / "zoo", tasks=("fam_add_2", "fam_word_2"), steps=(10, 20, 30, 40, 50, 60),
                    model_config=tiny_folder[2].config)
    finish(run_with_devices(EIGHT_DEVICES, [zoo, tmp_path, tiny_folder[0]], 8))
    modes = ("delta_w", "multitask", "sft+delta_w")
    loss = {(m, n): json.loads((tmp_path / f"loss-{m}{n}.json").read_text()) for m in modes for n in (1, 8)}
    for mode in modes:  # the ΔW loss; ΔW + the behavioural loss; ΔW + the end-to-end loss
        assert len(loss[mode, 1]) == 3 and len(set(loss[mode, 1])) == 3  # three different steps
        np.testing.assert_allclose(loss[mode, 8], loss[mode, 1], rtol=1e-5)
        # With the end-to-end term, gradient entries near Adam's epsilon (1e-8) turn float noise into parameter
        # differences up to a few % of one step (seen: 1.6e-4 at lr 3e-3), while the losses agree within 2e-7.
        assert_same_arrays(*(np.load(tmp_path / f"params-{mode}{n}.npz") for n in (1, 8)),
                           atol=5e-4 if mode == "sft+delta_w" else 1e-5)
    assert loss["multitask", 1] != loss["delta_w", 1] != loss["sft+delta_w", 1]  # the added terms count

    # Two processes of 4 devices, one program: the same loss and parameters as one process of 8.
    port = 20000 + os.getpid() % 20000
    procs = [run_with_devices(EIGHT_DEVICES, [zoo, tmp_path, tiny_folder[0], f"localhost:{port}", i], 4)
             for i in (0, 1)]
    for p in procs:
        finish(p)
    one = json.loads((tmp_path / "scores8.json").read_text())
    for i in (0, 1):
        two = json.loads((tmp_path / f"loss-delta_w8-process{i}.json").read_text())
        np.testing.assert_allclose(two, loss["delta_w", 8], rtol=1e-5)
        assert_same_arrays(np.load(tmp_path / "params-delta_w8.npz"),
                           np.load(tmp_path / f"params-delta_w8-process{i}.npz"))
        two = json.loads((tmp_path / f"scores8-process{i}.json").read_text())  # every process gets every row
        assert two["texts"] == one["texts"] and len(two["scores"]) == 16
        for a, b in zip(one["scores"], two["scores"]):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_teacher_training_and_scoring_on_8_devices_equal_one(tiny_folder, tmp_path):
    finish(run_with_devices(TEACHER_AND_SCORING, [tiny_folder[0], tmp_path], 8))
    one, eight = (json.loads((tmp_path / f"result{n}.json").read_text()) for n in (1, 8))
    assert len(set(one["loss"])) == 3
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
    assert_same_arrays(*(np.load(tmp_path / f"teacher{n}.npz") for n in (1, 8)))
    for name in ("base", "one", "per_question"):
        assert len(one["scores"][name]) == 16
        for a, b in zip(one["scores"][name], eight["scores"][name]):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
            assert np.argmax(a) == np.argmax(b)
    assert one["scores"]["one"] != one["scores"]["base"]  # the adapter is applied
    assert eight["texts"] == one["texts"] and any(one["texts"])
