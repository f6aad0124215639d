"""Cost of LoRA in our decoder, per-row adapters, and ours vs PEFT's PyTorch forward; SmolLM2-135M, one process.

    python benchmarks/lora.py [--batch 8 --seq 128 --rank 8 --repeats 7] [--threads N]

float32, r=8 on all 7 projections, random non-zero B. Prints median times and three ratios:
  LoRA / no LoRA forward time              (target <= 1.2x)
  8 adapters one per row / 1 shared        (throughput, target >= 0.8x)
  ours / PEFT forward with the same adapter (speed, target >= 1.0x; torch pinned to the same threads)
On the CPU backend it also times our forward compiled with oneDNN matmuls (`llgbm_jax.base.cpu_matmul`,
opt-in) and prints that ratio too.
Calls are timed round-robin (medians after warm-up). ``--threads N`` pins the whole process to N cores
(XLA sizes its pool from the affinity mask) and torch to N threads: steadier numbers on a busy machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile

from llgbm_jax.benchmarks.common import interleaved_medians, load_smollm2_pair, parse_args, save_result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rank", type=int, default=8)
    args, n_threads = parse_args(ap, argv, repeats=7)
    import jax
    import numpy as np
    import torch

    from llgbm_jax.base import decoder
    from llgbm_jax.base.cpu_matmul import compile_with_onednn
    from llgbm_jax.lora.adapter import LoRAConfig, init_lora, stack_loras
    from llgbm_jax.lora.peft import save_peft_adapter

    ours, ref = load_smollm2_pair()
    cfg = LoRAConfig(args.rank, 2 * args.rank)
    print(f"threads: {n_threads} | jax {jax.__version__} | torch {torch.__version__} | batch {args.batch}x{args.seq} "
          f"float32 | LoRA r={args.rank} on {len(cfg.target_modules)} modules")

    rng = np.random.RandomState(0)
    ids = jax.device_put(rng.randint(10, ours.config.vocab_size, (args.batch, args.seq)).astype(np.int32))
    mask = jax.device_put(np.ones((args.batch, args.seq), np.int32))
    loras = [init_lora(jax.random.PRNGKey(i), ours.config, cfg, random_b=True) for i in range(args.batch)]
    shared, per_row = loras[0], stack_loras(loras)
    hidden = jax.jit(lambda p, i, m, l: decoder.forward(p, ours.config, i, m, l)[0])

    from peft import PeftModel

    ids_t, mask_t = torch.tensor(np.asarray(ids), dtype=torch.long), torch.tensor(np.asarray(mask))

    def torch_logits(model):
        with torch.inference_mode():
            return model(input_ids=ids_t, attention_mask=mask_t).logits

    with tempfile.TemporaryDirectory() as tmp:  # PEFT wraps a copy: `ref` stays the plain transformers model
        folder = save_peft_adapter(shared, os.path.join(tmp, "a"))
        peft_model = PeftModel.from_pretrained(copy.deepcopy(ref), folder).eval()
    diff = float(np.abs(torch_logits(peft_model).numpy() - np.asarray(ours.logits(ids, mask, shared))).max())
    onednn = {}
    if jax.default_backend() == "cpu":
        logits = lambda p, i, m, l: decoder.logits(p, ours.config, i, m, l)
        base_1, lora_1 = (compile_with_onednn(logits, ours.params, ids, mask, l) for l in (None, shared))
        diff_onednn = float(np.abs(np.asarray(lora_1(ours.params, ids, mask, shared))
                                   - np.asarray(ours.logits(ids, mask, shared))).max())
        onednn = {"logits_base_onednn": lambda: base_1(ours.params, ids, mask, None).block_until_ready(),
                  "logits_lora_onednn": lambda: lora_1(ours.params, ids, mask, shared).block_until_ready()}
    t = interleaved_medians({
        "logits_base": lambda: ours.logits(ids, mask).block_until_ready(),
        "logits_lora": lambda: ours.logits(ids, mask, shared).block_until_ready(),
        "logits_per_row": lambda: ours.logits(ids, mask, per_row).block_until_ready(),
        "hidden_base": lambda: hidden(ours.params, ids, mask, None).block_until_ready(),
        "hidden_lora": lambda: hidden(ours.params, ids, mask, shared).block_until_ready(),
        "peft_lora": lambda: torch_logits(peft_model),
        "torch_base": lambda: torch_logits(ref),
        **onednn,
    }, args.repeats)

    tokens = args.batch * args.seq
    for k, v in t.items():
        print(f"  {k:15s} {v * 1e3:8.1f} ms  ({tokens / v:7.0f} tok/s)")
    r = {
        "lora_over_base": t["logits_lora"] / t["logits_base"],
        "lora_over_base_hidden": t["hidden_lora"] / t["hidden_base"],
        "per_row_throughput_over_shared": t["logits_lora"] / t["logits_per_row"],
        "ours_over_peft_speed": t["peft_lora"] / t["logits_lora"],
        "ours_over_torch_base_speed": t["torch_base"] / t["logits_base"],
    }
    print(f"forward time with LoRA / without:       {r['lora_over_base']:.3f}x (target <= 1.2x; "
          f"without the output head {r['lora_over_base_hidden']:.3f}x)")
    print(f"throughput 8 per-row adapters / shared:  {r['per_row_throughput_over_shared']:.3f}x (target >= 0.8x)")
    print(f"speed ours / PEFT (same adapter):        {r['ours_over_peft_speed']:.3f}x (target >= 1.0x); "
          f"max |logit diff| {diff:.2e} (same adapter, same numbers)")
    print(f"  (for reference, without LoRA: ours / transformers {r['ours_over_torch_base_speed']:.3f}x; "
          f"PEFT's LoRA costs {t['peft_lora'] / t['torch_base']:.3f}x its base forward)")
    if onednn:
        r.update(ours_onednn_over_peft_speed=t["peft_lora"] / t["logits_lora_onednn"],
                 ours_onednn_over_torch_base_speed=t["torch_base"] / t["logits_base_onednn"])
        print(f"with oneDNN matmuls (opt-in): ours / PEFT {r['ours_onednn_over_peft_speed']:.3f}x, without LoRA "
              f"ours / transformers {r['ours_onednn_over_torch_base_speed']:.3f}x; max |logit diff| to the default "
              f"build {diff_onednn:.1e}")
    result = dict(threads=n_threads, batch=args.batch, seq=args.seq, rank=args.rank,
                  times_ms={k: v * 1e3 for k, v in t.items()}, ratios=r, max_logit_diff_vs_peft=diff)
    if onednn:
        result["max_logit_diff_onednn_vs_default"] = diff_onednn
    return save_result(args, result)
