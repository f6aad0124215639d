"""`llgbm-jax`, the command line: every command's help, the round trip text → adapter → PEFT → logits, `evaluate`
printing what the library computes, and a clear one-line error for each bad input a user can make."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from llgbm_jax.cli import main
from llgbm_jax.cli.main import COMMANDS

from conftest import DATA_DIR, help_text, load_in_peft, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["Add 3 to the number.", "Add 3 to this number: 41"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_says_what_it_does_and_shows_an_example(command):
    text = help_text([command])
    summary = COMMANDS[command][1]
    assert summary[0].upper() + summary[1:] + "." in text
    example = text.split("example:\n", 1)[1].strip()
    assert example.startswith(f"llgbm-jax {command}") and "\n" not in example


def test_command_options():
    """The options the docs name (formerly checked on experiments/train_teachers.py and teacher_pilot.py)."""
    zoo = help_text(["zoo"])
    for flag in ("--preset", "--zoo-dir", "--tasks", "--runs-per-task", "--steps", "--data-dir", "--model",
                 "--rebuild-stale"):
        assert flag in zoo
    assert "arc_e_cloze" in help_text(["pilot"])
    for what in ("hf-to-jax", "peft-to-jax", "export-peft"):
        assert what in help_text(["convert"])
    for what in ("zoo", "generated"):
        assert what in help_text(["verify"])


def test_scripts_and_console_entry_run():
    """The README's script, ``python -m llgbm_jax`` and the installed console script start and show their help."""
    script = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "delta_w.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and "usage: llgbm-jax train" in script.stdout, script.stderr
    module = subprocess.run([sys.executable, "-m", "llgbm_jax"], capture_output=True, text=True, timeout=120)
    assert module.returncode == 2 and all(name in module.stdout for name in COMMANDS), module.stderr
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "llgbm-jax"]
    assert ep.value == "llgbm_jax.cli.main:entry_point"


@pytest.fixture(scope="module")
def generator_dir(tiny_folder, tmp_path_factory):
    """A small generator for the tiny model, its B heads made non-zero (an untrained one writes ΔW = 0), saved."""
    from llgbm_jax.generator.config import TrainingConfig
    from llgbm_jax.generator.model import create_generator, save_generator

    folder, _, ours = tiny_folder
    config = TrainingConfig(base_model=folder, lora_rank=4, lora_alpha=8.0, generator_hidden=16, embedding_dim=4,
                            generator_layers=1)
    gen = create_generator(config, 0, model_config=ours.config)
    for i, head in enumerate(gen.b_heads.values()):
        head.kernel.set_value(0.05 * jax.random.normal(jax.random.PRNGKey(i), head.kernel.shape))
    gen.b_scale.set_value(jax.numpy.ones_like(gen.b_scale[...]))
    path = str(tmp_path_factory.mktemp("gen") / "generator")
    save_generator(gen, path, config)
    return path


def test_generate_round_trip_loads_in_peft_with_our_logits(tiny_folder, generator_dir, tmp_path, capsys):
    """`generate` → PEFT folder → `PeftModel.from_pretrained` with no warning (strict) → the same logits as ours;
    the folder holds the adapter the generator makes from the prompts."""
    from llgbm_jax.generator.model import generate_lora, load_generator
    from llgbm_jax.lora.peft import load_peft_adapter

    folder, torch_model, ours = tiny_folder
    out = str(tmp_path / "adapter")
    assert run_cli(["generate", "--generator", generator_dir, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
                    "--out", out]) == out
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "PeftModel.from_pretrained" in printed and f"--adapter {out}" in printed
    assert json.loads(open(os.path.join(out, "adapter_config.json")).read())["base_model_name_or_path"] == folder
    adapter = load_peft_adapter(out, ours.config)
    want = generate_lora(load_generator(generator_dir)[0], PROMPTS)
    for m in want.modules:
        np.testing.assert_allclose(np.asarray(adapter.B[m]), np.asarray(want.B[m]), rtol=1e-6, atol=1e-8)
    ids, mask = ours.encode([ours.chat_prompt(p) for p in PROMPTS])
    with torch.no_grad():
        ref = load_in_peft(torch_model, out)(input_ids=torch.as_tensor(ids, dtype=torch.long),
                                             attention_mask=torch.as_tensor(mask)).logits.numpy()
    mine = np.asarray(ours.logits(ids, mask, adapter))
    assert np.abs(mine - ref)[mask > 0].max() < 1e-4
    assert np.abs(mine - np.asarray(ours.logits(ids, mask)))[mask > 0].max() > 1e-3  # the adapter does something

    # --prompts FILE (one per line) gives the same adapter; an existing --out needs --force.
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    assert main(["generate", "--generator", generator_dir, "--prompts", str(tmp_path / "prompts.txt"),
                 "--out", out]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["generate", "--generator", generator_dir, "--prompts", str(tmp_path / "prompts.txt"), "--out", out,
                 "--force"]) == 0
    again = load_peft_adapter(out, ours.config)
    np.testing.assert_allclose(np.asarray(again.B["q_proj"]), np.asarray(adapter.B["q_proj"]), rtol=1e-6, atol=1e-8)


def test_evaluate_prints_what_the_library_computes(tiny_folder, generator_dir, tmp_path, capsys):
    from llgbm_jax.evaluation.comparison import format_adapter_vs_base
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.scoring.accuracy import compute_accuracy_with_lora
    from llgbm_jax.scoring.stats import paired_gain
    from llgbm_jax.tasks.registry import get_task

    folder, _, ours = tiny_folder
    out = str(tmp_path / "adapter")
    run_cli(["generate", "--generator", generator_dir, "--prompt", PROMPTS[0], "--out", out])
    capsys.readouterr()
    result = run_cli(["evaluate", "--adapter", out, "--task", "fam_add_2", "--max-samples", "6", "--no-progress",
                      "--out", str(tmp_path / "eval.json")])
    printed = capsys.readouterr().out
    assert format_adapter_vs_base(result) in printed and json.loads((tmp_path / "eval.json").read_text()) == result
    task = get_task("fam_add_2")
    records = task.load("eval")[:6]
    hits = [[d["correct"] for d in compute_accuracy_with_lora(lora, ours, records, task, return_details=True,
                                                               show_progress=False)["details"]]
            for lora in (None, load_peft_adapter(out, ours.config))]
    assert (result["n"] == 6 and result["base"]["correct"] == sum(hits[0])
            and result["adapter"]["correct"] == sum(hits[1]))
    assert result["adapter"]["gain_over_base"] == pytest.approx(paired_gain(*hits))
    assert f"({sum(hits[1])}/6)" in printed and "±" in printed


def test_chat_with_and_without_an_adapter(tiny_folder, generator_dir, tmp_path, capsys):
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.scoring.accuracy import generate_texts

    folder, _, ours = tiny_folder
    out = str(tmp_path / "adapter")
    run_cli(["generate", "--generator", generator_dir, "--prompt", PROMPTS[0], "--out", out])
    with_adapter = run_cli(["chat", "--adapter", out, "--max-new-tokens", "6", PROMPTS[1]])
    without = run_cli(["chat", "--model", folder, "--max-new-tokens", "6", PROMPTS[1]])
    prompt = [ours.chat_prompt(PROMPTS[1])]
    assert with_adapter == generate_texts(ours, prompt, load_peft_adapter(out, ours.config), max_new_tokens=6)
    assert without == generate_texts(ours, prompt, max_new_tokens=6)
    printed = capsys.readouterr().out
    assert f"+ {out}" in printed and "(no adapter)" in printed and f"> {PROMPTS[1]}\n{with_adapter[0]}" in printed


def bad_input(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"llgbm-jax {argv[0]}: error: ") and captured.err.count("\n") == 1
    return captured.err


def test_bad_input_gets_a_one_line_error(tiny_folder, generator_dir, tmp_path, capsys):
    from llgbm_jax.lora.adapter import LoRAConfig, init_lora
    from llgbm_jax.lora.peft import save_peft_adapter

    folder, _, ours = tiny_folder
    out = str(tmp_path / "out")
    # prompts: empty
    assert "no prompts" in bad_input(["generate", "--generator", generator_dir, "--prompt", " ", "--out", out], capsys)
    (tmp_path / "empty.json").write_text("[]")
    assert "no prompts" in bad_input(["generate", "--generator", generator_dir, "--prompts",
                                      str(tmp_path / "empty.json"), "--out", out], capsys)
    # generator folders: missing, not a generator, made for another base model
    err = bad_input(["generate", "--generator", str(tmp_path / "nothing"), "--prompt", "x", "--out", out], capsys)
    assert "nothing: no such generator folder" in err
    err = bad_input(["generate", "--generator", str(tmp_path), "--prompt", "x", "--out", out], capsys)
    assert f"{tmp_path}: not a saved generator" in err
    err = bad_input(["generate", "--generator", generator_dir, "--prompt", "x", "--out", out,
                     "--model", "smollm2-135m-instruct"], capsys)
    assert f"writes adapters for base model {folder!r}, not 'smollm2-135m-instruct'" in err
    assert not os.path.exists(out)
    # tasks: unknown, listing the known ones
    run_cli(["generate", "--generator", generator_dir, "--prompt", "x", "--out", out])
    err = bad_input(["evaluate", "--adapter", out, "--task", "fam_add_99", "--data-dir", DATA_DIR], capsys)
    assert "unknown task 'fam_add_99'" in err and "fam_add_2" in err and "arc_e_cloze" in err
    # adapters made for another base model: by the recorded name, and by shape
    lora = init_lora(jax.random.PRNGKey(0), ours.config, LoRAConfig(rank=2, alpha=4.0), random_b=True)
    other = save_peft_adapter(lora, str(tmp_path / "qwen"), base_model_name_or_path="Qwen/Qwen2.5-0.5B-Instruct")
    err = bad_input(["evaluate", "--adapter", other, "--task", "fam_add_2", "--model", folder], capsys)
    assert "made for base model 'Qwen/Qwen2.5-0.5B-Instruct'" in err and "--model" in err
    err = bad_input(["chat", "--adapter", other, "--model", folder, "hi"], capsys)
    assert "made for base model 'Qwen/Qwen2.5-0.5B-Instruct'" in err
    unnamed = save_peft_adapter(lora, str(tmp_path / "unnamed"))
    err = bad_input(["chat", "--adapter", unnamed, "--model", "smollm2-135m-instruct", "hi"], capsys)
    assert "unnamed: does not fit base model 'smollm2-135m-instruct'" in err
