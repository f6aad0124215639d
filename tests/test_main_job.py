"""The main job `experiments/delta_w.py`, end to end on a tiny model (SmolLM2's tokenizer, random weights)
and a small zoo of trajectory-like random teachers: every phase runs, every file is written, the numbers it
reports equal an independent computation, the exported adapters load in PEFT, and a second run reuses the
caches and the finished generator."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, load_in_peft
from test_dataset import write_zoo

from llgbm_jax.config import TrainingConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(argv, base_model):
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        import delta_w
    finally:
        sys.path.pop(0)
    return delta_w.main(argv, base_model=base_model, compilation_cache=False)  # no process-wide XLA cache here


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

    from llgbm_jax.evaluation import compute_accuracy_with_lora, paired_gain
    from llgbm_jax.generator import load_generator
    from llgbm_jax.peft_io import load_peft_adapter
    from llgbm_jax.tasks import get_task

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
        assert acc["n"] == 5 and acc["generated"]["correct"] == mine["correct"] and acc["base"]["correct"] == base["correct"]
        gain = paired_gain([d["correct"] for d in base["details"]], [d["correct"] for d in mine["details"]])
        assert acc["generated"]["gain_over_base"] == pytest.approx(gain)
        # The exported folder is the adapter the generator makes from the recorded prompts, and PEFT loads it.
        from llgbm_jax.generator import generate_lora

        again = generate_lora(generator, per["condition_prompts"])
        np.testing.assert_allclose(np.asarray(again.B["q_proj"]), np.asarray(adapter.B["q_proj"]), rtol=1e-5, atol=1e-7)
        pm = load_in_peft(torch_model, folder)
        ids, mask = ours.encode([ours.chat_prompt(r["prompt"]) for r in records[:2]])
        with torch.no_grad():
            ref = pm(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask)).logits.numpy()
        assert np.abs(np.asarray(ours.logits(ids, mask, adapter)) - ref)[mask > 0].max() < 1e-4

    # A second run reuses the zoo, the caches, the finished generator and every score (nothing is rescored),
    # and reports the same numbers.
    from llgbm_jax import comparison

    monkeypatch.setattr(comparison, "score", lambda *a, **k: pytest.fail("a second run scored an adapter again"))
    again = run_main(argv, ours)
    assert again["training"]["loss_history"] == saved["training"]["loss_history"]
    assert {t: a["generated"]["correct"] for t, a in again["accuracy"].items()} == {
        t: a["generated"]["correct"] for t, a in saved["accuracy"].items()}
    assert again["phase_seconds"]["training"] < saved["phase_seconds"]["training"]
