"""Commands users run first: greedy chat with the embedded model and the base-accuracy table."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from conftest import DATA_DIR, hf_generate, run_cli, torch_option_logliks


@pytest.mark.slow
def test_chat_prints_answers(smollm2, smollm2_torch, torch_one_thread, capsys):
    """`llgbm-jax chat`: the printed answer is transformers' greedy continuation of the same chat prompt."""
    answers = run_cli(["chat", "What is 2+2?", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    answer = answers[0]
    assert f"> What is 2+2?\n{answer}" in out
    model, tok = smollm2_torch
    ids = np.asarray([tok(smollm2.chat_prompt("What is 2+2?"), add_special_tokens=False)["input_ids"]])
    new = hf_generate(model, ids, np.ones_like(ids), 8, pad_token_id=smollm2.pad_token_id,
                      eos_token_id=list(smollm2.eos_token_ids))[0].tolist()
    cut = next((i for i, t in enumerate(new) if t in smollm2.eos_token_ids), len(new))
    assert answer == tok.decode(new[:cut], skip_special_tokens=True) and cut > 0


@pytest.mark.slow
def test_eval_base_writes_table_and_json(smollm2, smollm2_torch, torch_one_thread, tmp_path, capsys):
    out_file = tmp_path / "base.json"
    run_cli(["base-accuracy", "--tasks", "arc_e", "boolq", "--max-samples", "6", "--data-dir", DATA_DIR,
             "--out", str(out_file), "--no-progress"])
    printed = capsys.readouterr().out
    assert "ARC-e throughput" in printed and "majority" in printed
    result = json.loads(out_file.read_text())
    # The same numbers from an independent computation: transformers' option log-likelihoods on the
    # same 6 questions, and the answer counts of the records.
    from llgbm_jax.scoring.stats import wilson_interval
    from llgbm_jax.tasks.registry import get_task

    model, tok = smollm2_torch
    for name in ("arc_e", "boolq"):
        r, task = result["tasks"][name], get_task(name)
        records = task.load("eval", DATA_DIR)[:6]
        correct = 0
        for rec in records:
            options = task.options(rec)
            scores = torch_option_logliks(model, tok, task.format_prompt(rec, smollm2), options)
            correct += options[int(np.argmax(scores))] == rec["response"].strip()
        counts = collections.Counter(rec["response"].strip() for rec in records)
        label, n = counts.most_common(1)[0]
        assert (r["total"], r["correct"], r["parse_failures"]) == (6, correct, 0)
        assert r["accuracy"] == correct / 6 and r["ci95"] == list(wilson_interval(correct, 6))
        assert (r["majority_label"], r["majority_baseline"]) == (label, n / 6)
