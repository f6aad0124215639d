"""The accelerator benchmark: ours vs transformers / PEFT on the same random weights, one process.

    python benchmarks/accelerator.py [--out results/accelerator_h200.json]   # a GPU (or TPU) machine
    python benchmarks/accelerator.py --tiny [--dtype float32]                # any CPU, in a few minutes

Weights: a transformers `Qwen2ForCausalLM` made from a `Qwen2Config` with Qwen2.5-0.5B-Instruct's shapes
(24 layers, hidden 896, 14 heads, 2 key/value heads, vocab 151936, tied embeddings, q/k/v bias), random,
saved once and loaded by both sides (no download); bfloat16 by default. torch runs on CUDA when it can
see a GPU, with attention "sdpa". Medians of calls timed round-robin after warm-up; ratios are
reference time / our time (> 1: we are faster). Measured:

  forward 16 x 512 and 4 x 2048      logits, ours (`attention` chosen automatically) vs transformers
  forward with LoRA r 16, 16 x 512    all 7 projections, ours vs PEFT with the same adapter
  greedy generation, 32 x 128 new     tokens/s, 32 prompts of 64 tokens, ours vs `generate`
  LoRA SFT step 16 x 512, AdamW       ours `teachers.train_step` vs PEFT + torch.optim.AdamW
                                      (loss on the last 64 tokens of each row, logits only there)

Checks printed and saved with the times: ours vs transformers logits, ours vs PEFT logits, generated
tokens, first-step losses, and every fused attention path against the chunked one on left- and
right-padded batches (logits, and a loss on the final hidden states with its LoRA gradient). Targets on an H100/H200:
forward >= 1.5x at both shapes, LoRA SFT step >= 3x, generation >= 10x. ``--tiny`` runs everything at tiny
shapes (CI), where the fused paths are checked as ``xla`` and ``splash`` (Pallas interpret mode).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile

from llgbm_jax.benchmarks.common import interleaved_medians, parse_args, save_result

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY = dict(QWEN25_05B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
SHAPES = {  # (batch, seq) of each measurement; generation: (prompts, new tokens), prompts of gen_prompt tokens
    "full": dict(forward=[(16, 512), (4, 2048)], lora=(16, 512), gen=(32, 128), gen_prompt=64, sft=(16, 512),
                 sft_targets=64, check=(4, 512)),
    "tiny": dict(forward=[(2, 64), (1, 160)], lora=(2, 64), gen=(3, 8), gen_prompt=8, sft=(2, 64), sft_targets=8,
                 check=(3, 72)),
}
TARGETS = {"forward": 1.5, "generate": 10.0, "sft_step": 3.0}


def _shape(s: str) -> tuple[int, int]:
    a, b = s.lower().split("x")
    return int(a), int(b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model and shapes (runs on a CPU)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--forward", type=_shape, nargs="+", help="forward shapes, e.g. 16x512 4x2048")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    ap.add_argument("--remat", default="dots", help="our SFT step's remat setting (`decoder.remat_policy`)")
    args, n_threads = parse_args(ap, argv, repeats=5)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from llgbm_jax.base import attention, decoder
    from llgbm_jax.base.model import load_base_model
    from llgbm_jax.lora.adapter import LoRAConfig, init_lora
    from llgbm_jax.lora.peft import save_peft_adapter
    from llgbm_jax.teachers.sft import train_step
    from llgbm_jax.utils import optim

    shapes = dict(SHAPES["tiny" if args.tiny else "full"])
    shapes["forward"] = args.forward or shapes["forward"]
    remat = {"True": True, "False": False}.get(args.remat, args.remat)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    backend = attention.current_backend()

    tmp = tempfile.TemporaryDirectory()
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**(TINY if args.tiny else QWEN25_05B))).to(tdtype).save_pretrained(tmp.name)
    ours = load_base_model(tmp.name, dtype=args.dtype)
    ref = AutoModelForCausalLM.from_pretrained(tmp.name, dtype=tdtype, attn_implementation="sdpa").to(device).eval()
    cfg, params = ours.config, ours.params
    lora = init_lora(jax.random.PRNGKey(0), cfg, LoRAConfig(args.rank, 2 * args.rank), random_b=True)
    save_peft_adapter(lora, os.path.join(tmp.name, "lora"))
    peft_model = PeftModel.from_pretrained(copy.deepcopy(ref), os.path.join(tmp.name, "lora")).eval()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({backend}) | torch {torch.__version__} on "
          f"{device} | {'tiny' if args.tiny else 'Qwen2.5-0.5B'} shapes, random weights, {args.dtype} | "
          f"{n_threads} CPU threads | attention setting {attention.attention_setting()}")

    rng = np.random.RandomState(0)
    tokens = lambda b, s: rng.randint(10, cfg.vocab_size, (b, s)).astype(np.int32)
    as_torch = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.long, device=device)

    def torch_call(model, ids, mask):
        """A timed reference forward: the logits of ``model`` (transformers or PEFT), synchronised."""
        ids_t, mask_t = as_torch(ids), as_torch(mask)

        def call():
            with torch.inference_mode():
                out = model(input_ids=ids_t, attention_mask=mask_t).logits
            sync()
            return out
        return call

    fns, checks, paths = {}, {}, {}

    # --- forward (and with LoRA) -------------------------------------------------------------------
    def ours_logits(ids, mask, with_lora=False):
        padding = attention.padding_for(mask, ours.dtype)
        fn = jax.jit(lambda p, i, m, l: decoder.logits(p, cfg, i, m, l, padding=padding))
        ids_j, mask_j, l = jax.device_put(ids), jax.device_put(mask), (lora if with_lora else None)
        paths[f"{ids.shape[0]}x{ids.shape[1]}"] = attention.choose_attention(backend, ours.dtype, padding, False,
                                                                               attention.attention_setting())
        return lambda: fn(params, ids_j, mask_j, l).block_until_ready()

    for b, s in shapes["forward"]:
        ids, mask = tokens(b, s), np.ones((b, s), np.int32)
        fns[f"forward_{b}x{s}_ours"] = ours_logits(ids, mask)
        fns[f"forward_{b}x{s}_ref"] = torch_call(ref, ids, mask)
        if (b, s) == shapes["forward"][0]:  # on two rows: full-vocabulary logits are large
            want = torch_call(ref, ids[:2], mask[:2])().float().cpu().numpy()
            checks["logits_vs_transformers"] = _diff(ours.logits(ids[:2], mask[:2]), want)
    b, s = shapes["lora"]
    ids, mask = tokens(b, s), np.ones((b, s), np.int32)
    fns[f"lora_forward_{b}x{s}_ours"] = ours_logits(ids, mask, with_lora=True)
    fns[f"lora_forward_{b}x{s}_ref"] = torch_call(peft_model, ids, mask)
    want = torch_call(peft_model, ids[:2], mask[:2])().float().cpu().numpy()
    checks["lora_logits_vs_peft"] = _diff(ours.logits(ids[:2], mask[:2], lora), want)

    # --- greedy generation ---------------------------------------------------------------------------
    n_prompts, new = shapes["gen"]
    gids, gmask = tokens(n_prompts, shapes["gen_prompt"]), np.ones((n_prompts, shapes["gen_prompt"]), np.int32)
    gids_j, gmask_j = jax.device_put(gids), jax.device_put(gmask)
    fns["generate_ours"] = lambda: decoder.generate(params, cfg, gids_j, gmask_j, max_new_tokens=new, eos_ids=(-1,),
                                                    pad_id=0, padding="none").block_until_ready()
    gids_t, gmask_t = as_torch(gids), as_torch(gmask)

    def generate_ref():
        with torch.inference_mode():
            out = ref.generate(input_ids=gids_t, attention_mask=gmask_t, max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=0)[:, gids.shape[1]:]
        sync()
        return out

    fns["generate_ref"] = generate_ref
    same = np.asarray(fns["generate_ours"]()) == fns["generate_ref"]().cpu().numpy()
    first_diff = np.where(same.all(-1), new, (~same).argmax(-1))  # per row: tokens equal before the first difference
    checks["generated_tokens"] = {"rows_identical": float(same.all(-1).mean()),
                                  "equal_prefix_mean": float(first_diff.mean())}

    # --- LoRA SFT step -------------------------------------------------------------------------------
    b, s = shapes["sft"]
    k = shapes["sft_targets"]
    sids = tokens(b, s)
    pos = np.tile(np.arange(s - k - 1, s - 1, dtype=np.int32), (b, 1))
    batch = dict(ids=sids, mask=np.ones((b, s), np.int32), target_pos=pos, target_ids=sids[:, s - k:],
                 target_mask=np.ones((b, k), np.float32))
    batch_j = jax.device_put(batch)
    tx, _ = optim.adamw(1e-4, 1, 1000)
    state = {"lora": jax.tree_util.tree_map(jnp.copy, lora)}
    state["opt"] = tx.init(state["lora"])

    def sft_ours():
        state["lora"], state["opt"], m = train_step(state["lora"], state["opt"], params, cfg, tx, batch_j, remat)
        return float(m["loss"])

    trainable = PeftModel.from_pretrained(copy.deepcopy(ref), os.path.join(tmp.name, "lora"), is_trainable=True).train()
    opt = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    inner = trainable.base_model.model
    sids_t, smask_t, pos_t, tgt_t = (as_torch(x) for x in (sids, batch["mask"], pos, batch["target_ids"]))

    def sft_ref():
        hidden = inner.model(input_ids=sids_t, attention_mask=smask_t).last_hidden_state
        picked = torch.gather(hidden, 1, pos_t[..., None].expand(-1, -1, hidden.shape[-1]))
        loss = torch.nn.functional.cross_entropy(inner.lm_head(picked).float().flatten(0, 1), tgt_t.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        return loss.item()

    first = {"ours": sft_ours(), "peft": sft_ref()}  # before any update: the same loss
    checks["first_sft_loss"] = dict(first, abs_diff=abs(first["ours"] - first["peft"]))
    fns["sft_step_ours"], fns["sft_step_ref"] = sft_ours, sft_ref

    t = interleaved_medians(fns, args.repeats, warmup=1)
    ratios = {}
    for name in [n[:-5] for n in fns if n.endswith("_ours")]:
        ratios[name] = t[name + "_ref"] / t[name + "_ours"]
        kind = "generate" if name == "generate" else "sft_step" if name == "sft_step" else "forward"
        rate = (f"{n_prompts * new / t[name + '_ours']:8.0f} tok/s vs {n_prompts * new / t[name + '_ref']:8.0f} tok/s"
                if kind == "generate" else f"{t[name + '_ours'] * 1e3:8.1f} ms vs {t[name + '_ref'] * 1e3:8.1f} ms")
        target = "" if name.startswith("lora") else f" (target {TARGETS[kind]:g}x)"
        print(f"  {name:24s} ours {rate} reference: {ratios[name]:.2f}x{target}")
    print(f"attention path of each forward: {paths}")
    print(f"checks: {checks}")

    # --- fused attention paths against the chunked one, on padded batches (last: it clears jit caches) --
    fused = {"gpu": ["cudnn"], "tpu": ["splash"]}.get(backend, ["xla", "splash"])
    b, s = shapes["check"]
    cids = tokens(b, s)
    real = np.arange(s)[None] < np.linspace(s, s // 4, b).astype(int)[:, None]
    w = jax.random.normal(jax.random.PRNGKey(1), (cfg.hidden_size,))

    def hidden_loss(l, ids, mask, padding):  # a scalar of every real position's final hidden state
        h = decoder.forward(params, cfg, ids, mask, l, padding=padding)[0].astype(jnp.float32)
        return jnp.sum(jnp.where(mask[..., None] > 0, h * w, 0.0)) / jnp.sum(mask)

    loss_grad = jax.jit(jax.value_and_grad(hidden_loss), static_argnums=3)

    def run(impl, cmask):
        with attention.use_attention(impl):
            padding = attention.padding_for(cmask, ours.dtype)
            loss, grads = loss_grad(lora, cids, cmask, padding)
            return np.asarray(ours.logits(cids, cmask, lora))[cmask > 0], float(loss), jax.tree_util.tree_leaves(grads)

    fused_checks = {}
    for side, cmask in (("right", real), ("left", real[:, ::-1])):
        cmask = cmask.astype(np.int32)
        taken = {impl: attention.choose_attention(backend, ours.dtype, attention.padding_of(cmask), False, impl)
                 for impl in fused}
        if all(path == "chunked" for path in taken.values()):
            fused_checks.update({f"{impl}_{side}": {"path_taken": "chunked"} for impl in fused})
            continue
        logits0, loss0, grads0 = run("chunked", cmask)
        for impl in fused:
            logits, loss, grads = run(impl, cmask) if taken[impl] != "chunked" else (logits0, loss0, grads0)
            fused_checks[f"{impl}_{side}"] = {
                "path_taken": taken[impl], "logits": _diff(logits, logits0), "loss_abs_diff": abs(loss - loss0),
                "grad_max_rel_diff": max(_diff(x, y)["max_abs"] / max(_diff(x, y)["max_ref"], 1e-30)
                                         for x, y in zip(grads, grads0))}
    checks["fused_vs_chunked"] = fused_checks
    for name, c in fused_checks.items():
        line = f"  fused vs chunked, {name:14s} (ran {c['path_taken']:7s})"
        if "logits" in c:
            line += (f": logits max |diff| {c['logits']['max_abs']:.2e} (max |logit| {c['logits']['max_ref']:.2f}), "
                     f"loss |diff| {c['loss_abs_diff']:.1e}, LoRA gradient max relative diff "
                     f"{c['grad_max_rel_diff']:.1e}")
        print(line)
    tmp.cleanup()
    result = dict(device=str(jax.devices()[0].device_kind), backend=backend, torch_device=device, dtype=args.dtype,
                  tiny=args.tiny, shapes=shapes, remat=args.remat, rank=args.rank,
                  threads=n_threads, attention_paths=paths, times_ms={k: v * 1e3 for k, v in t.items()},
                  ratios=ratios, targets=TARGETS, checks=checks)
    return save_result(args, result)


def _diff(got, want) -> dict:
    """Max and mean |got - want|, and max |want| (the scale)."""
    import numpy as np

    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    d = np.abs(got - want)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "max_ref": float(np.abs(want).max())}
