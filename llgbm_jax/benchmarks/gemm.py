"""float32 matmul rate of XLA:CPU against torch at SmolLM2-135M's projection shapes, one process.

    python benchmarks/gemm.py [--tokens 1024] [--repeats 20] [--threads N]

For each weight shape ``[out, in]`` (q/o, k/v, gate/up, down, output head) prints GFLOP/s of our
``x @ Wᵀ`` under `jax.jit`, of torch's ``F.linear`` (what transformers runs) and of torch's
``x @ W`` with W stored ``[in, out]``, and the ratio ours / F.linear; on the CPU backend also ours with
oneDNN matmuls (`llgbm_jax.base.cpu_matmul`, opt-in) and its ratio.
"""

from __future__ import annotations

import argparse

from llgbm_jax.benchmarks.common import median_time, parse_args, save_result

SHAPES = {"q_proj/o_proj": (576, 576), "k_proj/v_proj": (192, 576), "gate_proj/up_proj": (1536, 576),
          "down_proj": (576, 1536), "lm_head": (49152, 576)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1024, help="rows of x (batch x sequence)")
    args, n_threads = parse_args(ap, argv, repeats=20)
    import jax
    import numpy as np
    import torch

    from llgbm_jax.base.cpu_matmul import compile_with_onednn

    cpu = jax.default_backend() == "cpu"
    print(f"threads: {n_threads} | jax {jax.__version__} | torch {torch.__version__} | x [{args.tokens}, in] float32")
    x_wt = lambda x, w: x @ w.T
    matmul = jax.jit(x_wt)
    rng = np.random.RandomState(0)
    rows = {}
    for name, (out, inp) in SHAPES.items():
        x, w = rng.randn(args.tokens, inp).astype(np.float32), rng.randn(out, inp).astype(np.float32)
        xj, wj = jax.device_put(x), jax.device_put(w)
        xt, wt, wt_in_out = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(np.ascontiguousarray(w.T))
        gflop = 2 * args.tokens * inp * out / 1e9
        t = {"ours": median_time(lambda: matmul(xj, wj).block_until_ready(), args.repeats),
             "torch_linear": median_time(lambda: torch.nn.functional.linear(xt, wt), args.repeats),
             "torch_matmul": median_time(lambda: xt @ wt_in_out, args.repeats)}
        if cpu:
            matmul_1 = compile_with_onednn(x_wt, xj, wj)
            t["ours_onednn"] = median_time(lambda: matmul_1(xj, wj).block_until_ready(), args.repeats)
        rows[name] = {k: gflop / v for k, v in t.items()}
        r = rows[name]
        print(f"  {name:18s} [{out:5d}, {inp:4d}]: ours {r['ours']:5.0f} | F.linear {r['torch_linear']:5.0f} | "
              f"x @ W {r['torch_matmul']:5.0f} GFLOP/s | ours / F.linear {r['ours'] / r['torch_linear']:.2f}x"
              + (f" | oneDNN {r['ours_onednn']:5.0f} GFLOP/s, {r['ours_onednn'] / r['torch_linear']:.2f}x"
                 if cpu else ""))
    return save_result(args, {"threads": n_threads, "tokens": args.tokens, "gflops": rows})
