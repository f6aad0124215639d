"""The benchmarks (`llgbm_jax.benchmarks`, run by ``python benchmarks/<name>.py``) run, and what they time is
computed right (against torch on the same inputs)."""

from __future__ import annotations

from llgbm_jax.benchmarks import accelerator, attention, delta_w_loss, deltas, generator_step, text_encoder


def test_attention_benchmark_agrees_with_torch_sdpa():
    """What the attention benchmark times is right: chunked causal attention (several chunks, a partial
    last one) and one softmax equal torch's SDPA within 1e-5, and their gradients with respect to q, k
    and v (of the sum of squared outputs) equal torch's within 1e-5 of the largest gradient entry."""
    result = attention.main(["--batch", "2", "--seqs", "45", "--repeats", "1"])
    row = result["seqs"][45]
    print(f"max |diff| forward {row['max_diff_vs_torch']:.1e}, "
          f"gradient (relative) {row['max_grad_rel_diff_vs_torch']:.1e}")
    assert row["max_diff_vs_torch"] <= 1e-5 and row["max_grad_rel_diff_vs_torch"] <= 1e-5
    assert set(row["ms"]) == {"chunked_fwd", "chunked_grad", "one_softmax_fwd", "one_softmax_grad", "torch_fwd",
                              "torch_grad"}


def test_accelerator_benchmark_tiny():
    """`benchmarks/accelerator.py --tiny` (float32, CPU): every measurement runs and is timed; ours equals
    transformers and PEFT on the same weights (logits within 1e-4, greedy tokens identical, the same first
    SFT loss); the fused attention paths (xla, and splash in interpret mode) equal the chunked path on
    right- and left-padded batches, and xla leaves left padding to the chunked path."""
    result = accelerator.main(["--tiny", "--dtype", "float32", "--repeats", "1"])
    assert set(result["ratios"]) == {"forward_2x64", "forward_1x160", "lora_forward_2x64", "generate", "sft_step"}
    assert all(v > 0 for v in result["times_ms"].values()) and len(result["times_ms"]) == 10
    checks = result["checks"]
    for name in ("logits_vs_transformers", "lora_logits_vs_peft"):
        assert checks[name]["max_abs"] <= 1e-4 and checks[name]["max_ref"] > 0.1
    assert checks["generated_tokens"]["rows_identical"] == 1.0
    assert checks["first_sft_loss"]["abs_diff"] <= 1e-5
    fused = checks["fused_vs_chunked"]
    assert {k: v["path_taken"] for k, v in fused.items()} == {
        "xla_right": "xla", "xla_left": "chunked", "splash_right": "splash", "splash_left": "splash"}
    for c in fused.values():
        assert c["logits"]["max_abs"] <= 1e-5 and c["loss_abs_diff"] <= 1e-5 and c["grad_max_rel_diff"] <= 1e-4


def test_text_encoder_benchmark_tiny(tmp_path):
    """`benchmarks/text_encoder.py` on 12 prompts: both encoders are timed, the ratio is the rate ratio, ours
    agrees with sentence-transformers (cosine within 1e-5 of 1), and the JSON is written."""
    import json

    from conftest import DATA_DIR

    out = tmp_path / "te.json"
    result = text_encoder.main(["--n", "12", "--batch-size", "8", "--repeats", "1", "--data-dir", DATA_DIR,
                                "--out", str(out)])
    assert result["n"] == 12 and result["tokens"] > 12 * 5 and result["max_cosine_deviation"] <= 1e-5
    assert all(v > 0 for v in result["seconds"].values())
    rate = result["texts_per_s"]
    assert abs(result["ratio"] - rate["ours"] / rate["sentence_transformers"]) < 1e-9
    assert abs(rate["ours"] - 12 / result["seconds"]["ours"]) < 1e-6 * rate["ours"]
    assert json.loads(out.read_text())["ratio"] == result["ratio"]


def test_deltas_benchmark_agrees_with_peft(tmp_path):
    """Batched deltas of a tiny zoo (adapters of different ranks) equal PEFT's one-by-one deltas within 1e-4
    (relative), and the times and ratio it reports are those of the two passes."""
    import json

    out = tmp_path / "deltas.json"
    result = deltas.main(["--tiny", "--batch-size", "2", "--repeats", "1", "--out", str(out)])
    assert result["num_adapters"] == 3 and len(result["rel_diff"]) == 3 and result["batch_size"] == 2
    assert result["max_rel_diff"] <= 1e-4
    t = result["times_s"]
    assert set(t) == {"ours_batched", "peft_one_by_one"} and all(v > 0 for v in t.values())
    assert result["ours_over_peft_speed"] == t["peft_one_by_one"] / t["ours_batched"]
    assert json.loads(out.read_text()) == result


def test_generator_step_benchmark_sides_agree():
    """Tiny shapes: ours and the research-style torch step hold the same number of parameters and compute the
    same ΔW loss from the same weights, before and after one AdamW update."""
    import numpy as np

    result = generator_step.main(["--tiny", "--repeats", "1"])
    assert result["params"]["ours"] == result["params"]["torch"] > 0
    ours, torch_ = result["losses"]["ours"], result["losses"]["torch"]
    np.testing.assert_allclose(ours, torch_, rtol=1e-4)
    assert ours[0] > 0 and abs(ours[1] - ours[0]) > 1e-3 * ours[0]  # the update changed the loss
    assert all(v > 0 for v in result["ms_per_step"].values())


def test_delta_w_loss_benchmark_factored_equals_dense():
    """Tiny shapes: the factored ΔW loss and its gradient equal the dense PyTorch ones (research code's way)
    within 1e-5 / 1e-4 (relative), dense JAX agrees too, and every variant was timed."""
    result = delta_w_loss.main(["--tiny", "--repeats", "1"])
    assert [(r["shape"], r["rank"]) for r in result["rows"]] == [("tiny", 2), ("tiny", 4)]
    for row in result["rows"]:
        assert row["value_rel"] <= 1e-5 and row["grad_rel"] <= 1e-4 and row["dense_jax_value_rel"] <= 1e-5
        assert set(row["ms"]) == set(delta_w_loss.VARIANTS) and all(v > 0 for v in row["ms"].values())
