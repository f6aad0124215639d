"""One end-to-end (SFT) generator step, ours vs PyTorch + PEFT written the research code's way; SmolLM2-135M, one
process.

    python benchmarks/sft_generator_step.py [--batch 4 --rows 4 --seq 64 --repeats 3] [--threads N]

Both sides hold the same generator (`LoRAGenerator`, SmolLM2 shapes, r 8 on all seven modules, ≈42.6M
parameters) with the same weights, and the same batch: ``--batch`` conditions, each with ``--rows`` training
rows of ``--seq`` tokens whose last 4 tokens are supervised.
  ours:  one `jax.jit` (`generator.training.make_train_step` with the `sft` mode's loss): the generator writes
         every adapter at once, the decoder runs all rows with one adapter per row, cross-entropy at the
         supervised positions, optax AdamW.
  torch: the research code's way: the same generator as a `torch.nn.Module`, then a Python loop over the adapters:
         each one's factors put into a PEFT model of the base model with `torch.func.functional_call`, its rows
         forwarded, the supervised logits' cross-entropy summed; backward through the generator, torch AdamW.
Prints milliseconds per step, the speed ratio and the loss of both sides before and after one update (they
must agree).
"""

from __future__ import annotations

import argparse

from llgbm_jax.benchmarks.common import interleaved_medians, load_smollm2_pair, parse_args, save_result

LR = 1e-3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="adapters (conditions) per step")
    ap.add_argument("--rows", type=int, default=4, help="training rows per adapter")
    ap.add_argument("--seq", type=int, default=64, help="tokens per row (the family's examples pad to 64)")
    args, n_threads = parse_args(ap, argv, repeats=3)
    import jax
    import numpy as np
    import optax
    import torch
    from peft import LoraConfig, get_peft_model

    from llgbm_jax.ablations import mode_config
    from llgbm_jax.benchmarks.generator_step import torch_generator
    from llgbm_jax.generator.config import TrainingConfig
    from llgbm_jax.generator.losses import DeltaInputs, MultiTaskLoss
    from llgbm_jax.generator.model import create_generator
    from llgbm_jax.generator.training import make_train_step, split_generator
    from llgbm_jax.lora.adapter import ALL_MODULES, LoRAConfig, init_lora, stack_loras

    ours, ref = load_smollm2_pair()
    mc = ours.config
    n, rows, s, k = args.batch, args.rows, args.seq, 4
    print(f"threads: {n_threads} | jax {jax.__version__} | torch {torch.__version__} | {n} adapters x {rows} rows x "
          f"{s} tokens, {k} supervised | r=8 on 7 modules | float32 | AdamW")

    config = mode_config(TrainingConfig(lora_rank=8, lora_alpha=16.0, batch_size=n), "sft")
    gen = create_generator(config, seed=0, model_config=mc)
    prompts = np.random.RandomState(1).normal(size=(n, 4, gen.cond_dim)).astype(np.float32)  # 4 prompts each
    cond = prompts.mean(1)
    gen.fit_condition_normalizer(cond)
    teachers = stack_loras([init_lora(jax.random.PRNGKey(10 + i), mc, LoRAConfig(8, 16.0), random_b=True, b_std=0.02)
                            for i in range(n)])
    gen.fit_output_scale(teachers)
    # Non-zero B heads, so that the adapters change the model from the first step on (as after some training).
    for j, m in enumerate(ALL_MODULES):
        head = gen.b_heads[m].kernel
        head.value = jax.random.normal(jax.random.PRNGKey(j), head.value.shape) * 0.02
    torch_gen = torch_generator(gen)

    rng = np.random.RandomState(0)
    ids = rng.randint(10, mc.vocab_size, (n, rows, s)).astype(np.int32)
    pos = np.broadcast_to(np.arange(s - k - 1, s - 1, dtype=np.int32), (n, rows, k)).copy()
    sft = dict(ids=ids, mask=np.ones_like(ids), target_pos=pos, target_ids=ids[..., s - k:],
               target_mask=np.ones((n, rows, k), np.float32))

    # --- ours ------------------------------------------------------------------------------------------------------
    graphdef, params, rest = split_generator(gen)
    tx = optax.adamw(LR, weight_decay=0.0)  # torch's AdamW defaults: betas (0.9, 0.999), eps 1e-8
    step = make_train_step(graphdef, rest, tx, MultiTaskLoss.from_config(config, mc))
    batch = {"condition": prompts[None], "index": np.arange(n, dtype=np.int32)[None],
             "sft": {k_: v[None] for k_, v in sft.items()}}
    delta = DeltaInputs(ours.params, None, None, None)
    state = {"p": params, "o": tx.init(params)}

    def ours_step():
        state["p"], state["o"], m = step(state["p"], state["o"], teachers, batch, delta)
        return float(m["loss"])

    # --- torch + PEFT, the research code's way -----------------------------------------------------------------------
    peft_model = get_peft_model(ref, LoraConfig(r=8, lora_alpha=16, target_modules=list(ALL_MODULES), lora_dropout=0.0))
    inner = peft_model.base_model.model  # LlamaForCausalLM with the LoRA layers
    names = {(m, l): f"layers.{l}.{'self_attn' if m in ('q_proj', 'k_proj', 'v_proj', 'o_proj') else 'mlp'}.{m}"
             for m in ALL_MODULES for l in range(mc.num_layers)}
    opt = torch.optim.AdamW(torch_gen.parameters(), lr=LR, weight_decay=0.0, eps=1e-8)
    t = lambda x: torch.tensor(np.asarray(x))
    cond_t, ids_t, pos_t, tgt_t = t(cond), t(ids).long(), t(pos).long(), t(sft["target_ids"]).long()

    def torch_step():
        A, B = torch_gen(cond_t)
        total = 0.0
        for i in range(n):  # one adapter at a time
            over = {}
            for (m, l), name in names.items():
                over[f"{name}.lora_A.default.weight"] = A[m][i, l]
                over[f"{name}.lora_B.default.weight"] = B[m][i, l]
            hidden = torch.func.functional_call(inner.model, over, (ids_t[i],),
                                                {"attention_mask": torch.ones_like(ids_t[i])}).last_hidden_state
            picked = torch.gather(hidden, 1, pos_t[i][..., None].expand(-1, -1, hidden.shape[-1]))
            total = total + torch.nn.functional.cross_entropy(inner.lm_head(picked).flatten(0, 1), tgt_t[i].flatten())
        loss = total / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    first = {"ours": [ours_step(), ours_step()], "torch": [torch_step(), torch_step()]}
    times = interleaved_medians({"ours": ours_step, "torch": torch_step}, args.repeats, warmup=0)
    ratio = times["torch"] / times["ours"]
    for name, v in times.items():
        print(f"  {name:6s} {v * 1e3:9.1f} ms/step")
    print(f"speed ours / torch + PEFT (loop over adapters): {ratio:.2f}x")
    print(f"loss before any update: ours {first['ours'][0]:.6f}, torch {first['torch'][0]:.6f}; after one update: "
          f"ours {first['ours'][1]:.6f}, torch {first['torch'][1]:.6f}")
    return save_result(args, dict(threads=n_threads, batch=n, rows=rows, seq=s, ms_per_step={k_: v * 1e3 for k_, v in
                                  times.items()}, ours_over_torch_speed=ratio, losses=first))


if __name__ == "__main__":
    main()
