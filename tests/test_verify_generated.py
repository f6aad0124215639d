"""`llgbm-jax verify generated` (`llgbm_jax.evaluation.verify.verify_generated`) and the PyTorch task scorer it
uses (`llgbm_jax.evaluation.reference`).

Reference: transformers + PEFT on the same weights and adapter folder. Tolerances (float32): tiny model,
summed option log-probabilities 1e-4 absolute and greedy gsm8k text identical; SmolLM2-135M (slow),
per-option log-probabilities 2e-3 and the same chosen option on every question (one may differ only
where its top two options are within 1e-3).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from llgbm_jax.cli import main as cli_main
from llgbm_jax.evaluation.reference import torch_accuracy, torch_generate_texts, torch_option_scores, torch_tokenizer
from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.lora.adapter import LoRAConfig, init_lora
from llgbm_jax.lora.peft import load_peft_adapter, save_peft_adapter
from llgbm_jax.scoring.accuracy import compute_accuracy_with_lora, generate_texts, score_options
from llgbm_jax.tasks.registry import get_task

from conftest import DATA_DIR, load_in_peft, run_cli

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return tiny_folder


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    """A random LoRA (B non-zero) of the tiny model, exported as a PEFT folder: ``(folder, lora)``."""
    _, _, ours = tiny
    lora = init_lora(jax.random.PRNGKey(1), ours.config, LoRAConfig(rank=4, alpha=8.0), random_b=True, b_std=0.5)
    folder = str(tmp_path_factory.mktemp("adapter") / "generated")
    return save_peft_adapter(lora, folder, base_model_name_or_path="tiny", model_config=ours.config), lora


@pytest.mark.parametrize("task_name", ["arc_e_cloze", "boolq"])
def test_torch_option_scores_equal_ours(tiny, adapter, task_name):
    folder, torch_model, ours = tiny
    task = get_task(task_name)
    records = task.load("eval", DATA_DIR)[:4]
    prompts = [task.format_prompt(r, ours) for r in records]
    options = [task.options(r) for r in records]
    tok = torch_tokenizer(folder)
    ref = torch_option_scores(load_in_peft(torch_model, adapter[0]), tok, prompts, options,
                              batch_size=3)  # batches mix questions
    mine, _ = score_options(ours, prompts, options, load_peft_adapter(adapter[0], ours.config))
    assert [len(x) for x in ref] == [len(o) for o in options]
    np.testing.assert_allclose(np.concatenate(ref), np.concatenate(mine), atol=1e-4, rtol=0)
    # The adapter matters far beyond the tolerance, so an adapter PEFT ignored would fail above.
    base = torch_option_scores(torch_model, tok, prompts, options)
    assert np.abs(np.concatenate(mine) - np.concatenate(base)).max() > 0.1


def test_torch_generation_equals_ours(tiny, adapter):
    folder, torch_model, ours = tiny
    task = get_task("gsm8k")
    prompts = [task.format_prompt(r, ours) for r in task.load("eval", DATA_DIR)[:3]]
    pm = load_in_peft(torch_model, adapter[0])
    ref = torch_generate_texts(pm, torch_tokenizer(folder), prompts, max_new_tokens=12, batch_size=2)
    assert ref == generate_texts(ours, prompts, adapter[1], batch_size=2, max_new_tokens=12)
    assert all(ref)


def write_run(run, tiny, adapter, accuracy: dict, exported, missing=()) -> str:
    """A fake main-job run folder: results.json (config, accuracy table, exported) and generated/<task> for
    every exported task except the ``missing`` ones."""
    folder, _, ours = tiny
    os.makedirs(run, exist_ok=True)
    for task in set(exported) - set(missing):
        save_peft_adapter(adapter[1], os.path.join(run, "generated", task), model_config=ours.config)
    config = TrainingConfig(base_model=folder, data_dir=DATA_DIR, output_dir=str(run))
    with open(os.path.join(run, "results.json"), "w") as f:
        json.dump({"config": config.to_dict(), "accuracy": accuracy,
                   "exported": {t: os.path.join(run, "generated", t) for t in exported}}, f)
    return str(run)


def reported(ours, adapter, task_name, n, shift=0):
    """The accuracy-table entry the main job writes for ``n`` questions, ``shift`` correct answers off."""
    task = get_task(task_name)
    res = compute_accuracy_with_lora(adapter[1], ours, task.load("eval", DATA_DIR)[:n], task, show_progress=False)
    c = res["correct"] + shift
    return {"n": n, "generated": {"accuracy": c / n, "correct": c}}


def run_script(argv):
    return run_cli(["verify", "generated", *argv])


def test_script_agrees_and_fails_on_a_wrong_reported_number(tiny, adapter, tmp_path, capsys):
    _, _, ours = tiny
    # arc_e_cloze: reported on the same 5 questions; boolq: reported on 8 (other questions than --n 5).
    acc = {"arc_e_cloze": reported(ours, adapter, "arc_e_cloze", 5), "boolq": reported(ours, adapter, "boolq", 8)}
    run = write_run(tmp_path / "good", tiny, adapter, acc, ["arc_e_cloze", "boolq"])
    out = run_script(["--run-dir", run, "--n", "5", "--no-progress"])
    printed = capsys.readouterr().out
    assert out["ok"] and "2/2 adapters load in PEFT" in printed
    assert json.loads((tmp_path / "good" / "verify_generated.json").read_text()) == json.loads(json.dumps(out))
    arc, boolq = out["tasks"]["arc_e_cloze"], out["tasks"]["boolq"]
    assert arc["n"] == boolq["n"] == 5 and arc["task_type"] == "cloze" and boolq["task_type"] == "bool"
    assert arc["reported"]["correct"] == arc["ours"]["correct"] and boolq["reported"] is None
    assert set(arc["checks"]) == {"peft_vs_ours", "reported_vs_peft", "reported_vs_ours"}
    for r in (arc, boolq):
        assert r["differing_predictions"] == 0 and r["peft"] == r["ours"] and r["max_abs_logprob_diff"] < 1e-4

    # A reported number 3 answers off, and a task whose adapter folder is missing: exit status 1.
    shift = 3 if acc["arc_e_cloze"]["generated"]["correct"] <= 2 else -3
    acc["arc_e_cloze"] = reported(ours, adapter, "arc_e_cloze", 5, shift)
    bad = write_run(tmp_path / "bad", tiny, adapter, acc, ["arc_e_cloze", "obqa_cloze"], missing=["obqa_cloze"])
    assert cli_main(["verify", "generated", "--run-dir", bad, "--n", "5", "--no-progress"]) == 1
    saved = json.loads((tmp_path / "bad" / "verify_generated.json").read_text())
    arc = saved["tasks"]["arc_e_cloze"]
    assert not saved["ok"] and not arc["ok"] and arc["checks"] == {
        "peft_vs_ours": True, "reported_vs_peft": False, "reported_vs_ours": False}
    assert not saved["tasks"]["obqa_cloze"]["ok"] and "generated/obqa_cloze" in saved["tasks"]["obqa_cloze"]["error"]


@pytest.mark.slow
def test_smollm2_peft_accuracy_equals_ours_on_arc_e_cloze(smollm2, smollm2_torch, tmp_path):
    torch_model, tok = smollm2_torch
    lora = init_lora(jax.random.PRNGKey(0), smollm2.config, LoRAConfig(rank=8, alpha=16.0), random_b=True)
    folder = save_peft_adapter(lora, str(tmp_path / "adapter"), model_config=smollm2.config)
    task = get_task("arc_e_cloze")
    records = task.load("eval", DATA_DIR)[:20]
    ref = torch_accuracy(load_in_peft(torch_model, folder), tok, task, records, smollm2)
    mine = compute_accuracy_with_lora(load_peft_adapter(folder, smollm2.config), smollm2, records, task,
                                      return_details=True, show_progress=False)
    diffs = [np.abs(np.subtract(a["logprobs"], b["logprobs"])).max() for a, b in zip(ref["details"], mine["details"])]
    assert max(diffs) < 2e-3
    differ = [a for a, b in zip(ref["details"], mine["details"]) if a["pred"] != b["pred"]]
    assert len(differ) <= 1 and all(np.diff(np.sort(a["logprobs"])[-2:])[0] < 1e-3 for a in differ)
    assert abs(ref["correct"] - mine["correct"]) <= len(differ)
