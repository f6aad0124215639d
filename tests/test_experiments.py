"""The scripts users run first: the README's main command and the base-accuracy table."""

from __future__ import annotations

import json
import os
import runpy
import sys

import pytest

from conftest import DATA_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_script(name: str, argv: list[str]):
    old = sys.argv
    sys.argv = [name] + argv
    try:
        runpy.run_path(os.path.join(ROOT, "experiments", name), run_name="__main__")
    finally:
        sys.argv = old


@pytest.mark.slow
def test_generate_script_prints_answers(smollm2, capsys):
    _run_script("generate.py", ["--prompt", "What is 2+2?", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert "> What is 2+2?" in out
    answer = out.split("> What is 2+2?\n", 1)[1].split("\n", 1)[0]
    assert answer.strip(), "no generated text"


@pytest.mark.slow
def test_eval_base_writes_table_and_json(smollm2, tmp_path, capsys):
    out_file = tmp_path / "base.json"
    _run_script("eval_base.py", ["--tasks", "arc_e", "boolq", "--max-samples", "6", "--data-dir", DATA_DIR,
                                 "--out", str(out_file), "--no-progress"])
    printed = capsys.readouterr().out
    assert "ARC-e throughput" in printed and "majority" in printed
    result = json.loads(out_file.read_text())
    for name in ("arc_e", "boolq"):
        r = result["tasks"][name]
        assert r["total"] == 6 and 0 <= r["correct"] <= 6 and r["parse_failures"] == 0
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
        assert 0 < r["majority_baseline"] <= 1
