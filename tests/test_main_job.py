"""The main job (`llgbm-jax train`, `llgbm_jax.evaluation.main_job.run`), end to end on a tiny model (SmolLM2's
tokenizer, random weights): on a small zoo of trajectory-like random teachers every phase runs, every file is
written, the numbers it reports equal an independent computation, the exported adapters load in PEFT, and a second
run reuses the caches and the finished generator; with no data folder it runs on the generated family and a kill
in any phase costs nothing but time; one job at a time holds a run folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from llgbm_jax.generator.config import TrainingConfig

from conftest import DATA_DIR, load_in_peft, run_cli
from test_dataset import write_zoo


def run_main(argv, base_model):
    return run_cli(["train", *argv], base_model=base_model, compilation_cache=False)  # no process-wide XLA cache


def test_main_job_end_to_end(tiny_smollm2_vocab, tmp_path, capsys, monkeypatch):
    torch_model, ours = tiny_smollm2_vocab
    zoo = write_zoo(tmp_path / "zoo", tasks=("arc_e_cloze", "boolq", "obqa_cloze"), steps=(10, 20, 30),
                    model_config=ours.config)
    manifest = json.loads((tmp_path / "zoo" / "manifest.json").read_text())  # OBQA: a single adapter, so it has
    manifest["adapters"] = [a for a in manifest["adapters"]  # no held-out one and its generated adapter is drawn
                            if a["task"] != "obqa_cloze" or a["step"] == 30]  # apart from the evaluation's
    (tmp_path / "zoo" / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    cfg = TrainingConfig(num_steps=6, warmup_steps=1, batch_size=2, lora_rank=4, lora_alpha=8.0, generator_hidden=32,
                         embedding_dim=8, num_probes=6, max_probe_length=96, delta_batch_probes=3, checkpoint_every=3,
                         num_prompts_per_adapter=4, zoo_dir=zoo, data_dir=DATA_DIR, output_dir=str(run),
                         checkpoint_dir=str(run / "checkpoints"), delta_cache_dir=str(tmp_path / "cache" / "deltas"),
                         embedding_cache_dir=str(tmp_path / "cache" / "embeddings"))
    argv = ["--config", cfg.save(str(tmp_path / "config.json")), "--accuracy-samples", "5", "--no-progress"]
    run_main(argv, ours)
    printed = capsys.readouterr().out
    for phase in ("[zoo]", "[components]", "[training]", "[evaluation]", "[accuracy]", "[export]"):
        assert phase in printed
    assert "accuracy on held-out questions" in printed and "phase times" in printed

    saved = json.loads((run / "results.json").read_text())
    assert saved["config"] == cfg.to_dict() == TrainingConfig.load(str(run / "config.json")).to_dict()
    assert (run / "training_curves.png").stat().st_size > 10_000
    assert len(saved["training"]["loss_history"]) == 6 and set(saved["phase_seconds"]) == {
        "zoo", "components", "training", "evaluation", "accuracy", "export"}
    splits = json.loads((run / "splits.json").read_text())
    assert saved["eval"]["adapters"] == splits["heldout_adapters"] and saved["eval"]["n_adapters"] == 2

    from llgbm_jax.generator.model import load_generator
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.scoring.accuracy import compute_accuracy_with_lora
    from llgbm_jax.scoring.stats import paired_gain
    from llgbm_jax.tasks.registry import get_task

    generator, loaded_cfg = load_generator(str(run / "generator"))
    assert loaded_cfg == cfg
    for task_name, acc in saved["accuracy"].items():
        per = saved["per_task"][task_name]
        assert set(per["condition_prompts"]) <= set(splits["heldout_prompts"][task_name])  # held-out prompts only
        folder = saved["exported"][task_name]
        adapter = load_peft_adapter(folder, ours.config)
        task = get_task(task_name)
        records = task.load("eval", DATA_DIR)[:5]
        mine = compute_accuracy_with_lora(adapter, ours, records, task, return_details=True, show_progress=False)
        base = compute_accuracy_with_lora(None, ours, records, task, return_details=True, show_progress=False)
        assert (acc["n"] == 5 and acc["generated"]["correct"] == mine["correct"]
                and acc["base"]["correct"] == base["correct"])
        gain = paired_gain([d["correct"] for d in base["details"]], [d["correct"] for d in mine["details"]])
        assert acc["generated"]["gain_over_base"] == pytest.approx(gain)
        # The exported folder is the adapter the generator makes from the recorded prompts, and PEFT loads it.
        from llgbm_jax.generator.model import generate_lora

        again = generate_lora(generator, per["condition_prompts"])
        np.testing.assert_allclose(np.asarray(again.B["q_proj"]), np.asarray(adapter.B["q_proj"]), rtol=1e-5, atol=1e-7)
        pm = load_in_peft(torch_model, folder)
        ids, mask = ours.encode([ours.chat_prompt(r["prompt"]) for r in records[:2]])
        with torch.no_grad():
            ref = pm(input_ids=torch.as_tensor(ids, dtype=torch.long),
                     attention_mask=torch.as_tensor(mask)).logits.numpy()
        assert np.abs(np.asarray(ours.logits(ids, mask, adapter)) - ref)[mask > 0].max() < 1e-4

    # A second run reuses the zoo, the caches, the finished generator and every score (nothing is rescored),
    # and reports the same numbers.
    from llgbm_jax.evaluation import comparison

    monkeypatch.setattr(comparison, "score", lambda *a, **k: pytest.fail("a second run scored an adapter again"))
    again = run_main(argv, ours)
    assert again["training"]["loss_history"] == saved["training"]["loss_history"]
    assert {t: a["generated"]["correct"] for t, a in again["accuracy"].items()} == {
        t: a["generated"]["correct"] for t, a in saved["accuracy"].items()}
    assert again["phase_seconds"]["training"] < saved["phase_seconds"]["training"]


# --- with no data folder, killed in every phase, and two jobs on one folder -------------------------------


class Killed(BaseException):
    """A stand-in for the process being killed (not an Exception: nothing may catch it)."""


def tiny_cpu_preset():
    """The cpu preset's real tasks (skipped without data) and three of its family tasks, with small teachers."""
    import dataclasses

    from llgbm_jax.teachers.run import TeacherConfig
    from llgbm_jax.teachers.zoo import PRESETS

    teacher = TeacherConfig(rank=2, alpha=4.0, steps=4, warmup_steps=1, save_every=1, adapters_per_run=2,
                            checkpoint_every=2, batch_size=2, learning_rate=5e-3, max_seq_len=96, remat=False)
    tasks = tuple(t for t in PRESETS["cpu"].tasks if not t.startswith("fam_")) + ("fam_reverse_words", "fam_word_2",
                                                                                    "fam_add_2")
    return dataclasses.replace(PRESETS["cpu"], tasks=tasks, teacher=teacher, task_overrides=(), eval_samples=4,
                               eval_overrides=())


def job_config(root) -> TrainingConfig:
    return TrainingConfig(num_steps=6, warmup_steps=1, batch_size=2, lora_rank=4, lora_alpha=8.0, generator_hidden=32,
                          embedding_dim=8, num_probes=6, max_probe_length=96, delta_batch_probes=3, checkpoint_every=3,
                          num_prompts_per_adapter=4, zoo_dir=str(root / "zoo"), output_dir=str(root / "run"),
                          checkpoint_dir=str(root / "run" / "checkpoints"),
                          delta_cache_dir=str(root / "cache" / "deltas"),
                          embedding_cache_dir=str(root / "cache" / "embeddings"))


def numbers(results: dict) -> dict:
    """What a run measured (not where it wrote, nor how long it took)."""
    return {"eval": results["eval"], "per_task": results["per_task"], "accuracy": results["accuracy"],
            "loss": results["training"]["loss_history"], "grad_norm": results["training"]["grad_norm_history"]}


def kill_on_call(monkeypatch, target: str, after: int = 0, run_first: bool = False):
    """Patch ``target`` so that its call number ``after`` (0-based) raises `Killed` (after running, with
    ``run_first``); returns the list of calls seen."""
    import importlib

    module, name = target.rsplit(".", 1)
    try:
        owner = importlib.import_module(module)
    except ModuleNotFoundError:  # a class attribute
        mod, cls = module.rsplit(".", 1)
        owner = getattr(importlib.import_module(mod), cls)
    real, calls = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) - 1 == after and not run_first:
            raise Killed(target)
        out = real(*args, **kwargs)
        if len(calls) - 1 == after:
            raise Killed(target)
        return out

    monkeypatch.setattr(owner, name, wrapper)
    return calls


# Where each phase is killed: after teacher steps (mid-run), after a delta entry, after a generator checkpoint,
# before the per-task comparison, after a score entry, after the adapters' export (before the generator's).
KILLS = {"zoo": ("llgbm_jax.teachers.run.train_step", 5, True),
         "components": ("llgbm_jax.conditions.deltas.DeltaCache._write", 0, True),
         "training": ("llgbm_jax.utils.checkpointing.TrainCheckpointer.save", 0, True),
         "evaluation": ("llgbm_jax.evaluation.comparison.make_variants", 0, False),
         "accuracy": ("llgbm_jax.evaluation.comparison.ScoreCache.put", 0, True),
         "export": ("llgbm_jax.generator.model.save_generator", 0, False)}


def test_main_job_with_no_data_survives_a_kill_in_every_phase(tiny_smollm2_vocab, tmp_path, capsys, monkeypatch):
    """With no data folder and no $LLGBM_DATA_DIR the job runs on the generated family (one line names the
    skipped tasks and how to add them) and writes results.json with the family tasks. Killed once in every phase
    and run again each time with the same command, it ends with the same numbers as an uninterrupted run."""
    import traceback

    from llgbm_jax.teachers import zoo as zoo_module

    _, ours = tiny_smollm2_vocab
    monkeypatch.delenv("LLGBM_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data here
    monkeypatch.setitem(zoo_module.PRESETS, "cpu", tiny_cpu_preset())
    family = [t for t in zoo_module.PRESETS["cpu"].tasks if t.startswith("fam_")]

    def job(root):
        argv = ["--config", job_config(root).save(str(root / "config.json")), "--accuracy-samples", "4",
                "--no-progress"]
        return run_main(argv, ours)

    whole = job(tmp_path / "whole")
    printed = capsys.readouterr().out
    assert "no task data for arc_e_cloze, boolq, obqa_cloze, gsm8k" in printed
    assert "--data-dir or $LLGBM_DATA_DIR" in printed and "experiments/prepare_data.py" in printed
    saved = json.loads((tmp_path / "whole" / "run" / "results.json").read_text())
    assert sorted(saved["accuracy"]) == sorted(saved["per_task"]) == sorted(family)
    assert numbers(saved) == numbers(json.loads(json.dumps(whole)))

    killed = tmp_path / "killed"
    for phase, (target, after, run_first) in KILLS.items():
        with monkeypatch.context() as m:
            calls = kill_on_call(m, target, after, run_first)
            with pytest.raises(Killed) as e:
                job(killed)
        assert len(calls) == after + 1, phase  # it died where it was meant to
        out = capsys.readouterr().out
        done = [p for p in KILLS if f"[{p}]" in out]
        where = "".join(traceback.format_tb(e.tb)[-3:])
        assert done == list(KILLS)[:list(KILLS).index(phase)], (phase, out, where)  # earlier phases finished first
        assert not (killed / "run" / "results.json").exists()
    resumed = job(killed)
    assert numbers(resumed) == numbers(whole)


def test_one_job_per_run_folder(tmp_path, capsys):
    """A second job on a run folder in use is refused, naming the holder; the lock of a killed job does not block."""
    import signal
    import subprocess
    import sys

    from llgbm_jax.cli import main
    from llgbm_jax.utils.lock import RunLocked, run_lock

    run = str(tmp_path / "run")
    with run_lock(run):
        with pytest.raises(RunLocked, match="in use by another job"):
            with run_lock(run):
                pass
        assert main(["train", "--output-dir", run, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{run} is in use by another job (process {os.getpid()}" in err and "--output-dir" in err
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom llgbm_jax.utils.lock import run_lock\n"
                               f"with run_lock({run!r}):\n    print('held', flush=True)\n    time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"process {holder.pid} "):
            with run_lock(run):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads(open(os.path.join(run, ".lock")).read())["pid"] == holder.pid  # the dead job's file is left
    with run_lock(run):  # and does not block
        pass
