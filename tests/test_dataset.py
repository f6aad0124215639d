"""`TrainingConfig`, the zoo splits, `RealAdapterDataset` and its batch iterator, on a small zoo written
directly (random adapters beside real training prompts; no training needed)."""

from __future__ import annotations

import json
import os
import zlib

import jax
import numpy as np
import pytest

from llgbm_jax.base.config import ModelConfig
from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.generator.dataset import RealAdapterDataset, make_splits
from llgbm_jax.lora.adapter import LoRAConfig, delta_w, init_lora
from llgbm_jax.lora.peft import save_peft_adapter
from llgbm_jax.tasks.registry import get_task
from llgbm_jax.teachers.manifest import final_adapters, read_zoo
from llgbm_jax.utils.io import write_json_atomic

from conftest import DATA_DIR

MC = ModelConfig("llama", 100, 16, 24, 2, 4, 2, 4)


def write_zoo(root, tasks=("arc_e_cloze", "boolq"), runs=1, steps=(10, 20, 30, 40), ranks=None, prompts_per_step=12,
              model_config=MC):
    """A zoo laid out as `build_zoo` writes it: random adapters along a trajectory per run, each with the real
    training prompts of its task seen up to its step (nested along the trajectory)."""
    entries = []
    for ti, task in enumerate(tasks):
        train = get_task(task).load("train", DATA_DIR)
        for run in range(runs):
            chunk = train[run * 200:(run + 1) * 200]
            for si, step in enumerate(steps):
                rel = f"{task}/run{run}/step_{step:05d}"
                rank = (ranks or {}).get(task, 4)
                # A trajectory: one direction per (task, run), growing along the steps, plus a little noise.
                cfg = LoRAConfig(rank, 2.0 * rank)
                lora = init_lora(jax.random.PRNGKey(100 * ti + 10 * run), model_config, cfg, random_b=True)
                noise = init_lora(jax.random.PRNGKey(1000 + 100 * ti + 10 * run + si), model_config, cfg, random_b=True)
                lora = jax.tree_util.tree_map(lambda x, e: x * (si + 1) / len(steps) + 0.1 * e, lora, noise)
                save_peft_adapter(lora, str(root / rel))
                write_json_atomic(str(root / rel / "prompts.json"),
                                  [r["prompt"] for r in chunk[:prompts_per_step * (si + 1)]])
                entries.append({"task": task, "task_type": get_task(task).task_type, "run": f"run{run}", "step": step,
                                "path": rel, "prompts": rel + "/prompts.json"})
    write_json_atomic(str(root / "manifest.json"), {"adapters": entries})
    return str(root)


def fake_embed(texts):
    """A deterministic stand-in for the text encoder, 8 numbers per text: a few surface features that differ
    between tasks (so conditions carry a task signal, as real sentence embeddings do) plus noise seeded by
    the text."""
    rows = []
    for t in texts:
        noise = np.random.default_rng(zlib.crc32(t.encode())).normal(size=4)  # not hash(): salted per process
        rows.append([t[:1].isupper(), t.rstrip().endswith("?"), len(t) / 100, t.count(" ") / 20, *(0.1 * noise)])
    return np.asarray(rows, np.float32)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return write_zoo(tmp_path_factory.mktemp("zoo"))


def dataset(zoo, split="train", **kw):
    return RealAdapterDataset(zoo, MC, split=split, num_prompts_per_adapter=4, seed=kw.pop("seed", 0),
                              embed=fake_embed, **kw)


# --- configuration --------------------------------------------------------------------------------------

def test_training_config_round_trip_and_refusals(tmp_path):
    c = TrainingConfig(num_steps=50, warmup_steps=5, lora_rank=4, seed=3)
    path = c.save(str(tmp_path / "config.json"))
    assert TrainingConfig.load(path) == c
    assert c.model_name == "smollm2-135m-instruct" and c.replace(use_small_model=False).model_name.startswith("Qwen/")
    d = json.loads(open(path).read())
    d["lora_rnak"] = 8
    open(path, "w").write(json.dumps(d))
    with pytest.raises(ValueError, match="unknown TrainingConfig field.*lora_rnak"):
        TrainingConfig.load(path)
    for bad, field in ((dict(warmup_steps=60, num_steps=50), "warmup_steps"), (dict(lora_rank=0), "lora_rank"),
                       (dict(dtype="float64"), "dtype"), (dict(lambda_weight=0.0, lambda_delta=0.0), "lambda_weight"),
                       (dict(target_modules=("q_proj", "qkv")), "target_modules"),
                       (dict(use_small_model=False, base_model="smollm2-135m-instruct"), "use_small_model"),
                       (dict(loss_normalize="layer"), "loss_normalize"),
                       (dict(teacher_checkpoints="last"), "teacher_checkpoints")):
        with pytest.raises(ValueError, match=f"TrainingConfig.{field}"):
            TrainingConfig(**bad)


# --- splits -----------------------------------------------------------------------------------------------

def test_splits_hold_out_a_middle_checkpoint_or_a_whole_run(zoo, tmp_path):
    adapters = read_zoo(zoo)
    s = make_splits(adapters, 0.25, seed=0)
    assert s.heldout_adapters == ["arc_e_cloze/run0/step_00020", "boolq/run0/step_00020"]
    assert not set(s.heldout_adapters) & set(s.train_adapters)
    assert sorted(s.heldout_adapters + s.train_adapters) == sorted(a.name for a in adapters)
    assert all("checkpoint step 20" in s.heldout_adapter_rule[t] for t in ("arc_e_cloze", "boolq"))
    assert {a.name for a in final_adapters(adapters)} <= set(s.train_adapters)  # the final teachers train
    for task, held in s.heldout_prompts.items():
        pool = {p for a in adapters if a.task == task for p in a.prompts}
        assert set(held) < pool and 0.1 < len(held) / len(pool) < 0.45
    assert s.leave_one_task_out["boolq"]["test"] == sorted(a.name for a in adapters if a.task == "boolq")
    assert not any(n.startswith("boolq/") for n in s.leave_one_task_out["boolq"]["train"])
    assert type(s).load(s.save(str(tmp_path / "splits.json"))) == s

    two_runs = write_zoo(tmp_path / "two", tasks=("boolq",), runs=2, steps=(10, 20))
    s2 = make_splits(read_zoo(two_runs))
    assert s2.heldout_adapters == ["boolq/run1/step_00010", "boolq/run1/step_00020"]
    assert "whole run run1" in s2.heldout_adapter_rule["boolq"]


def test_final_checkpoints_only(zoo):
    """checkpoints="final": one training target per teacher run, its last adapter, conditioned on all its
    training prompts; the evaluation split is unchanged."""
    everything, final = dataset(zoo), dataset(zoo, checkpoints="final")
    assert [a.name for a in final.adapters] == sorted(a.name for a in final_adapters(everything.adapters))
    assert len(final) == 2 < len(everything)
    held = lambda **kw: [a.name for a in dataset(zoo, "eval", **kw).adapters]
    assert held(checkpoints="final") == held()
    with pytest.raises(ValueError, match="checkpoints must be one of"):
        dataset(zoo, checkpoints="last")


# --- the dataset -----------------------------------------------------------------------------------------

def test_training_conditions_never_use_heldout_or_evaluation_prompts(zoo):
    train, held = dataset(zoo), dataset(zoo, "eval")
    eval_questions = {r["prompt"] for t in ("arc_e_cloze", "boolq") for r in get_task(t).load("eval", DATA_DIR)}
    heldout = {p for v in train.splits.heldout_prompts.values() for p in v}
    seen = set()
    for epoch in range(200):
        for i in range(len(train)):
            seen.update(train.sample(i, epoch)["prompts"])
    assert seen and not seen & heldout and not seen & eval_questions
    assert seen == set(train.texts)  # over many epochs every allowed prompt is drawn
    for i in range(len(held)):
        s = held.sample(i)
        assert set(s["prompts"]) <= heldout
        assert set(s["prompts"]) <= set(held.splits.heldout_prompts[s["task"]])  # its own task's


def test_samples_hold_condition_teacher_and_names(zoo):
    ds = dataset(zoo, teacher_deltas={a.name: np.full(5, i, np.float32) for i, a in enumerate(read_zoo(zoo))})
    s = ds.sample(0)
    a = ds.adapters[0]
    assert s["adapter"] == a.name and s["task"] == a.task and s["condition"].shape == (4, 8)
    np.testing.assert_array_equal(s["condition"], fake_embed(s["prompts"]))
    assert s["teacher"].batch_shape == () and s["teacher_delta"].shape == (5,)
    from llgbm_jax.lora.peft import load_peft_adapter

    ref = load_peft_adapter(a.path, MC)
    np.testing.assert_allclose(delta_w(s["teacher"], "q_proj"), delta_w(ref, "q_proj"), rtol=1e-6)
    batch = ds.collate_fn([ds.sample(i) for i in (2, 0, 1)])
    assert batch["condition"].shape == (3, 4, 8) and batch["teacher"].batch_shape == (3,)
    assert batch["adapter"] == [ds.adapters[i].name for i in (2, 0, 1)] and batch["teacher_delta"].shape == (3, 5)
    np.testing.assert_array_equal(batch["teacher"].A["v_proj"][1], s["teacher"].A["v_proj"])


def test_teachers_with_other_ranks_are_folded_exactly(tmp_path):
    zoo = write_zoo(tmp_path, ranks={"boolq": 2})
    ds = dataset(zoo)
    from llgbm_jax.lora.peft import load_peft_adapter

    assert ds.teachers.config.rank == 4 and ds.teachers.config.scaling == 1.0
    for i, a in enumerate(ds.adapters):
        ref = load_peft_adapter(a.path, MC)
        got = jax.tree_util.tree_map(lambda x: x[i], ds.teachers)
        for m in ("q_proj", "down_proj"):
            np.testing.assert_allclose(delta_w(got, m), delta_w(ref, m), rtol=1e-5, atol=1e-7)


def test_token_conditions(zoo):
    class Tok:
        def tokenize(self, texts):
            lengths = [3 + len(t) % 40 for t in texts]
            ids = np.zeros((len(texts), 64), np.int32)
            mask = np.zeros_like(ids)
            for i, n in enumerate(lengths):
                ids[i, :n], mask[i, :n] = 7, 1
            return ids, mask

    ds = RealAdapterDataset(zoo, MC, num_prompts_per_adapter=4, condition="tokens", text_encoder=Tok())
    batch = ds.collate_fn([ds.sample(i) for i in range(3)])
    ids, mask = batch["condition_ids"], batch["condition_mask"]
    assert ids.shape[:2] == (3, 4) and ids.shape[2] in (16, 32, 64) and ids.shape == mask.shape
    for r, s in enumerate(ds.sample(i) for i in range(3)):
        assert mask[r].sum(-1).tolist() == [3 + len(p) % 40 for p in s["prompts"]]


def test_batches_reshuffle_redraw_and_resume_exactly(zoo):
    ds = dataset(zoo)
    it = ds.batches(2)
    per_epoch = it.batches_per_epoch
    assert per_epoch == len(ds) // 2 == 3
    epochs = [[next(it) for _ in range(per_epoch)] for _ in range(3)]
    orders = [[n for b in e for n in b["adapter"]] for e in epochs]
    assert len(set(map(tuple, orders))) == 3  # a new order every epoch
    assert all(len(set(o)) == len(o) for o in orders)
    by_adapter = lambda e: {n: p for b in e for n, p in zip(b["adapter"], b["prompts"])}
    assert by_adapter(epochs[0]) != by_adapter(epochs[1])  # new condition prompts every epoch

    again = ds.batches(2)
    replay = [next(again) for _ in range(3 * per_epoch)]
    assert [b["adapter"] for b in replay] == [b["adapter"] for e in epochs for b in e]
    assert all(np.array_equal(a["condition"], b["condition"]) for a, b in zip(replay, [b for e in epochs for b in e]))

    resumed = ds.batches(2)
    for _ in range(4):
        next(resumed)
    state = resumed.state()
    assert state == {"epoch": 1, "position": 1}
    cont = ds.batches(2, state)
    assert [next(cont)["adapter"] for _ in range(5)] == [b["adapter"] for b in replay[4:9]]
    assert dataset(zoo, seed=1).batches(2).order(0).tolist() != it.order(0).tolist()
    with pytest.raises(ValueError, match="batch_size 7"):
        ds.batches(7)


def test_bad_zoo_entries_are_named(tmp_path):
    zoo = write_zoo(tmp_path, tasks=("boolq",), steps=(10, 20))
    manifest = json.load(open(os.path.join(zoo, "manifest.json")))
    os.remove(os.path.join(zoo, manifest["adapters"][1]["prompts"]))
    with pytest.raises(FileNotFoundError, match="step_00020/prompts.json"):
        read_zoo(zoo)
    with pytest.raises(FileNotFoundError, match="no teacher zoo"):
        read_zoo(str(tmp_path / "nothing"))
