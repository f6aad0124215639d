"""One teacher training step, ours vs PEFT + PyTorch; SmolLM2-135M, float32, one process.

    python benchmarks/teacher_step.py [--batch 8 --seq 160 --targets 4 --repeats 5] [--threads N]

Both sides start from the same LoRA (r=8, alpha 16, all 7 projections, random non-zero B), take the
same batch (loss on the last ``--targets`` tokens of every row, logits only at those positions) and
run AdamW. Ours is `llgbm_jax.teachers.train_step` as the trainer runs it (``TeacherConfig().remat``:
layers rematerialised except their projection outputs), with full remat and without remat; on the CPU
backend also as trained with oneDNN matmuls (opt-in). PEFT's is forward, backward and
`torch.optim.AdamW.step` without checkpointing.
Prints seconds per step, the speed ratio and the first-step loss of both.
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
    ap.add_argument("--seq", type=int, default=160, help="tokens per row (ARC-e/OBQA SFT rows pad to 160)")
    ap.add_argument("--targets", type=int, default=4, help="supervised tokens per row ('[', label, ']', end of turn)")
    args, n_threads = parse_args(ap, argv, repeats=5)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from peft import PeftModel

    from llgbm_jax.base.cpu_matmul import compile_with_onednn
    from llgbm_jax.lora.adapter import LoRAConfig, init_lora
    from llgbm_jax.lora.peft import save_peft_adapter
    from llgbm_jax.teachers.run import TeacherConfig
    from llgbm_jax.teachers.sft import train_step
    from llgbm_jax.utils import optim

    ours, ref = load_smollm2_pair()
    b, s, k = args.batch, args.seq, args.targets
    print(f"threads: {n_threads} | jax {jax.__version__} | torch {torch.__version__} | batch {b}x{s}, "
          f"{k} supervised tokens per row | float32 | LoRA r=8 on 7 modules | AdamW")

    rng = np.random.RandomState(0)
    ids = rng.randint(10, ours.config.vocab_size, (b, s)).astype(np.int32)
    pos = np.tile(np.arange(s - k - 1, s - 1, dtype=np.int32), (b, 1))
    batch = dict(ids=ids, mask=np.ones((b, s), np.int32), target_pos=pos, target_ids=ids[:, s - k:],
                 target_mask=np.ones((b, k), np.float32))
    lora0 = init_lora(jax.random.PRNGKey(0), ours.config, LoRAConfig(8, 16), random_b=True)
    tx, _ = optim.adamw(1e-4, 1, 1000)

    def ours_step(remat, onednn=False):
        lora = jax.tree_util.tree_map(jnp.copy, lora0)  # train_step donates its inputs
        state = {"lora": lora, "opt": tx.init(lora)}
        fn = lambda l, o, p, bt: train_step(l, o, p, ours.config, tx, bt, remat)
        fn = compile_with_onednn(fn, lora, state["opt"], ours.params, batch) if onednn else fn

        def step():
            state["lora"], state["opt"], m = fn(state["lora"], state["opt"], ours.params, batch)
            return float(m["loss"])
        return step

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_peft_adapter(lora0, os.path.join(tmp, "a"))
        peft_model = PeftModel.from_pretrained(copy.deepcopy(ref), folder, is_trainable=True).train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.ones((b, s), dtype=torch.long)
    pos_t, tgt_t = torch.tensor(pos, dtype=torch.long), torch.tensor(batch["target_ids"], dtype=torch.long)
    inner = peft_model.base_model.model  # LlamaForCausalLM with the LoRA layers injected

    def peft_step():
        hidden = inner.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        picked = torch.gather(hidden, 1, pos_t[..., None].expand(-1, -1, hidden.shape[-1]))
        loss = torch.nn.functional.cross_entropy(inner.lm_head(picked).flatten(0, 1), tgt_t.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    trained = TeacherConfig().remat
    first = {"ours": ours_step(trained)(), "peft": peft_step()}  # before any update: the same loss
    steps = {"ours": ours_step(trained), "ours_full_remat": ours_step(True), "ours_no_remat": ours_step(False),
             "peft": peft_step}
    if jax.default_backend() == "cpu":
        steps["ours_onednn"] = ours_step(trained, onednn=True)
    t = interleaved_medians(steps, args.repeats, warmup=1)
    for name, v in t.items():
        print(f"  {name:14s} {v:6.2f} s/step  ({b * s / v:6.0f} tok/s)")
    ratio = t["peft"] / t["ours"]
    print(f"speed ours / PEFT: {ratio:.2f}x as trained (remat={trained!r}); full remat "
          f"{t['peft'] / t['ours_full_remat']:.2f}x, no remat {t['peft'] / t['ours_no_remat']:.2f}x"
          + (f", as trained with oneDNN matmuls (opt-in) {t['peft'] / t['ours_onednn']:.2f}x"
             if "ours_onednn" in t else ""))
    print(f"first-step loss: ours {first['ours']:.6f}, PEFT {first['peft']:.6f} "
          f"(|diff| {abs(first['ours'] - first['peft']):.1e})")
    result = dict(threads=n_threads, batch=b, seq=s, targets=k, seconds_per_step=t, ours_over_peft_speed=ratio,
                  first_loss=first)
    return save_result(args, result)
