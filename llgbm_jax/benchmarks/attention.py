"""Causal grouped-query attention alone: ours in query chunks, ours in one softmax, torch's SDPA; one process.

    python benchmarks/attention.py [--batch 8 --seqs 128 160 448 --repeats 10] [--threads N]

SmolLM2-135M's shapes (9 query heads, 3 key/value heads, head size 64), float32, no padding. For each
length prints milliseconds per call of the forward and of the gradient (of a sum of squares, with
respect to q, k and v) of `attention.attend_chunked` with `attention.QUERY_CHUNK` and with one chunk, and of
torch's `scaled_dot_product_attention(is_causal=True)` (keys/values repeated per group, as
transformers does), with ratios ours / torch, and the largest difference of each of ours from torch's
output and gradients (the gradients relative to their largest entry).
"""

from __future__ import annotations

import argparse

from llgbm_jax.benchmarks.common import interleaved_medians, parse_args, save_result

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqs", type=int, nargs="+", default=[128, 160, 448])
    args, n_threads = parse_args(ap, argv, repeats=10)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from llgbm_jax.base import attention

    print(f"threads: {n_threads} | jax {jax.__version__} | torch {torch.__version__} | batch {args.batch}, "
          f"{HEADS} heads, {KV_HEADS} kv heads, head size {HEAD_DIM}, float32, query chunk {attention.QUERY_CHUNK}")
    rows = {}
    for s in args.seqs:
        rng = np.random.RandomState(0)
        q = rng.randn(args.batch, s, HEADS, HEAD_DIM).astype(np.float32)
        k, v = (rng.randn(args.batch, KV_HEADS, s, HEAD_DIM).astype(np.float32) for _ in range(2))
        allowed = jnp.asarray(np.broadcast_to(np.tril(np.ones((s, s), bool)), (args.batch, s, s)))
        ours = {}
        for name, chunk in (("chunked", attention.QUERY_CHUNK), ("one_softmax", s)):
            attend = lambda q, k, v, chunk=chunk: attention.attend_chunked(q, [(k, v, allowed)], query_chunk=chunk)
            ours[name] = jax.jit(attend), jax.jit(jax.grad(lambda *a, f=attend: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2)))
        qj, kj, vj = map(jnp.asarray, (q, k, v))
        qt = torch.from_numpy(q).transpose(1, 2).contiguous().requires_grad_()
        kt, vt = (torch.from_numpy(x).repeat_interleave(HEADS // KV_HEADS, 1).requires_grad_() for x in (k, v))
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

        def torch_grad():
            qt.grad = kt.grad = vt.grad = None
            (sdpa() ** 2).sum().backward()

        with torch.inference_mode():
            ref = sdpa().transpose(1, 2).reshape(args.batch, s, -1).numpy()
        diff = max(float(np.abs(np.asarray(f(qj, kj, vj)) - ref).max()) for f, _ in ours.values())
        torch_grad()  # the gradient too: torch's with respect to the per-group copies of k and v, summed per group
        ref_grads = (qt.grad.transpose(1, 2).numpy(), *(
            x.grad.reshape(args.batch, KV_HEADS, HEADS // KV_HEADS, s, HEAD_DIM).sum(2).numpy() for x in (kt, vt)))
        grad_diff = max(float(np.abs(np.asarray(ours_g) - ref_g).max() / np.abs(ref_g).max())  # relative
                        for _, g in ours.values() for ours_g, ref_g in zip(g(qj, kj, vj), ref_grads))
        fns = {}
        for name, (f, g) in ours.items():
            fns[f"{name}_fwd"] = lambda f=f: f(qj, kj, vj).block_until_ready()
            fns[f"{name}_grad"] = lambda g=g: jax.block_until_ready(g(qj, kj, vj))
        fns["torch_fwd"] = lambda: sdpa().detach()
        fns["torch_grad"] = torch_grad
        t = {k: 1e3 * x for k, x in interleaved_medians(fns, args.repeats).items()}
        rows[s] = dict(ms=t, max_diff_vs_torch=diff, max_grad_rel_diff_vs_torch=grad_diff)
        print(f"  {s:4d} tokens: forward ours {t['chunked_fwd']:6.2f} ms (one softmax {t['one_softmax_fwd']:6.2f}) | "
              f"torch {t['torch_fwd']:6.2f} ms | ours / torch {t['torch_fwd'] / t['chunked_fwd']:.2f}x;  gradient ours "
              f"{t['chunked_grad']:6.2f} ms (one softmax {t['one_softmax_grad']:6.2f}) | "
              f"torch {t['torch_grad']:6.2f} ms | "
              f"{t['torch_grad'] / t['chunked_grad']:.2f}x;  max |diff| {diff:.1e}, "
              f"gradient (relative to its largest entry) {grad_diff:.1e}")
    return save_result(args, {"threads": n_threads, "batch": args.batch, "seqs": rows})
