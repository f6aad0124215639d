"""ΔW loss, factored (ours) vs dense (ΔW = s·B@A formed per module and layer, then MSE), value and gradient.

    python benchmarks/delta_w_loss.py [--shapes smollm2|qwen2.5-0.5b|all] [--ranks 8 16] [--batch 4]
                                      [--repeats 3] [--no-memory] [--tiny] [--threads N] [--out FILE]

Three variants of ``value_and_grad`` with respect to the predicted factors, 4 predicted adapters against 4
teachers (random A as PEFT initialises it, random non-zero B) on all 7 projections, float32:
  factored_jax  `llgbm_jax.generator.losses.DeltaWLoss` (jit)
  dense_jax     the same MSE from dense ΔW (`llgbm_jax.lora.delta_w`, jit)
  dense_torch   the research code's way: dense ΔW in PyTorch, autograd
Times are medians of calls timed round-robin in this process after one warm-up call. Peak memory is
measured per variant in a fresh subprocess: inputs built (and JAX's function compiled ahead of time),
the peak-RSS mark reset (``/proc/self/clear_refs``), one call, then ``VmHWM`` minus the RSS before the
call (with ``MALLOC_MMAP_THRESHOLD_`` low so that memory freed earlier cannot hide the call's own). For the
JAX variants XLA's buffer assignment (temporaries + outputs) is printed too. Prints a table with the ratios
dense / factored and, per row, the agreement of the factored value and gradient with the dense torch ones.
Targets at Qwen2.5-0.5B shapes: >= 50x faster and >= 100x less memory than dense PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from llgbm_jax.benchmarks.common import interleaved_medians, parse_args, save_result

# (hidden, intermediate, layers, heads, kv heads, head_dim)
SHAPES = {"smollm2": (576, 1536, 30, 9, 3, 64), "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 64),
          "tiny": (64, 96, 2, 4, 2, 16)}
VARIANTS = ("factored_jax", "dense_jax", "dense_torch")


def model_config(shape: str):
    from llgbm_jax.base.config import ModelConfig

    h, i, layers, heads, kv, d = SHAPES[shape]
    return ModelConfig("llama", 1000, h, i, layers, heads, kv, d)


def make_inputs(shape: str, rank: int, batch: int, seed: int = 0) -> dict:
    """Numpy factors ``{side: {"A"|"B": {module: array}}}`` of ``batch`` predicted and teacher adapters."""
    import numpy as np

    cfg, rng = model_config(shape), np.random.default_rng(seed)
    out = {}
    for side in ("pred", "teacher"):
        out[side] = {"A": {}, "B": {}}
        for m, (o, i) in cfg.module_shapes.items():
            a = rng.uniform(-1, 1, (batch, cfg.num_layers, rank, i)).astype(np.float32)
            a *= np.float32(1 / np.sqrt(i))  # PEFT's Kaiming-uniform bound
            b = rng.standard_normal((batch, cfg.num_layers, o, rank), dtype=np.float32)
            b *= np.float32(0.02)
            out[side]["A"][m], out[side]["B"][m] = a, b
    return out


def jax_fn(variant: str, rank: int, inputs: dict):
    """``(fn, args)``: jitted value_and_grad w.r.t. the predicted LoRA, and its arguments."""
    import jax
    import jax.numpy as jnp

    from llgbm_jax.generator.losses import DeltaWLoss
    from llgbm_jax.lora.adapter import LoRA, LoRAConfig, delta_w

    cfg = LoRAConfig(rank, 2 * rank)
    pred, teacher = (LoRA({m: jnp.asarray(x) for m, x in inputs[s]["A"].items()},
                          {m: jnp.asarray(x) for m, x in inputs[s]["B"].items()}, cfg) for s in ("pred", "teacher"))
    if variant == "factored_jax":
        loss = DeltaWLoss(cfg.alpha, cfg.rank)
    else:
        def loss(p, t):
            total = sum(jnp.sum((delta_w(p, m) - delta_w(t, m)) ** 2) for m in p.modules)
            return total / sum(delta_w(p, m).size for m in p.modules)
    return jax.jit(jax.value_and_grad(loss)), (pred, teacher)


def torch_fn(rank: int, inputs: dict):
    """The research code's dense loss with autograd: ``fn() -> (value, grads dict)``."""
    import torch

    s = 2.0  # alpha / rank with alpha = 2 rank
    pa = {m: torch.from_numpy(x).requires_grad_() for m, x in inputs["pred"]["A"].items()}
    pb = {m: torch.from_numpy(x).requires_grad_() for m, x in inputs["pred"]["B"].items()}
    ta = {m: torch.from_numpy(x) for m, x in inputs["teacher"]["A"].items()}
    tb = {m: torch.from_numpy(x) for m, x in inputs["teacher"]["B"].items()}

    def fn():
        for t in list(pa.values()) + list(pb.values()):
            t.grad = None
        total, count = 0.0, 0
        for m in pa:
            diff = s * pb[m] @ pa[m] - s * tb[m] @ ta[m]
            total = total + (diff ** 2).sum()
            count += diff.numel()
            del diff
        loss = total / count
        loss.backward()
        return loss.detach(), {"A": {m: t.grad for m, t in pa.items()}, "B": {m: t.grad for m, t in pb.items()}}

    return fn


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def child(variant: str, shape: str, rank: int, batch: int) -> dict:
    """Run in a fresh process: peak resident memory of one value-and-gradient call (MB)."""
    inputs = make_inputs(shape, rank, batch)
    xla_mb = None
    if variant == "dense_torch":
        import torch

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "0")) or torch.get_num_threads())
        call = torch_fn(rank, inputs)
    else:
        import jax

        fn, args = jax_fn(variant, rank, inputs)
        compiled = fn.lower(*args).compile()
        mem = compiled.memory_analysis()
        xla_mb = (mem.temp_size_in_bytes + mem.output_size_in_bytes) / 2**20 if mem is not None else None
        call = lambda: jax.block_until_ready(compiled(*args))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status_kb("VmRSS")
    call()
    return {"peak_mb": (_status_kb("VmHWM") - base) / 1024, "xla_mb": xla_mb}


def measure_memory(variant: str, shape: str, rank: int, batch: int, threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", BENCH_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--shapes", shape, "--ranks", str(rank),
           "--batch", str(batch)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory child {variant} {shape} r={rank} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def run_row(shape: str, rank: int, batch: int, repeats: int, memory: bool, threads: int) -> dict:
    import jax
    import numpy as np

    inputs = make_inputs(shape, rank, batch)
    fns = {}
    for v in ("factored_jax", "dense_jax"):
        fn, args = jax_fn(v, rank, inputs)
        fns[v] = (lambda fn=fn, args=args: jax.block_until_ready(fn(*args)))
    fns["dense_torch"] = torch_fn(rank, inputs)
    # agreement of the factored value and gradient with the dense torch ones (same inputs)
    (val, grad), (tval, tgrad) = fns["factored_jax"](), fns["dense_torch"]()
    agree = {"value_rel": abs(float(val) - float(tval)) / abs(float(tval)),
             "grad_rel": _rel(np.concatenate([np.ravel(getattr(grad, f)[m]) for f in "AB" for m in grad.modules]),
                              np.concatenate([tgrad[f][m].numpy().ravel() for f in "AB" for m in grad.modules]))}
    dval = float(fns["dense_jax"]()[0])
    agree["dense_jax_value_rel"] = abs(dval - float(tval)) / abs(float(tval))
    del val, grad, tgrad
    t = interleaved_medians(fns, repeats, warmup=1)
    row = {"shape": shape, "rank": rank, "batch": batch, "ms": {k: v * 1e3 for k, v in t.items()}, **agree}
    if memory:
        row["memory"] = {v: measure_memory(v, shape, rank, batch, threads) for v in VARIANTS}
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="all", choices=["all", "smollm2", "qwen2.5-0.5b"])
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--batch", type=int, default=4, help="predicted adapters (and as many teachers)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, ranks 2 and 4, batch 2, no memory (tests)")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args, n_threads = parse_args(ap, argv, repeats=3)
    if args.child:
        print(json.dumps(child(args.child, args.shapes, args.ranks[0], args.batch)))
        return None
    if args.tiny:
        shapes, ranks, batch, memory = ["tiny"], [2, 4], 2, False
    else:
        shapes = ["smollm2", "qwen2.5-0.5b"] if args.shapes == "all" else [args.shapes]
        ranks, batch, memory = args.ranks, args.batch, not args.no_memory
    import jax
    import torch

    print(f"threads: {n_threads} | jax {jax.__version__} ({jax.default_backend()}) | torch {torch.__version__} | "
          f"{batch} predicted vs {batch} teacher adapters, 7 modules, float32, value and gradient")
    rows = []
    for shape in shapes:
        for rank in ranks:
            row = run_row(shape, rank, batch, args.repeats, memory, n_threads)
            rows.append(row)
            ms = row["ms"]
            line = (f"{shape:13s} r={rank:<3d} ms: factored {ms['factored_jax']:8.1f} | dense jax "
                    f"{ms['dense_jax']:9.1f} ({ms['dense_jax'] / ms['factored_jax']:6.1f}x) | dense torch "
                    f"{ms['dense_torch']:9.1f} ({ms['dense_torch'] / ms['factored_jax']:6.1f}x)")
            if memory:
                mem = {v: row["memory"][v]["peak_mb"] for v in VARIANTS}
                line += (f"\n{'':19s} peak MB: factored {mem['factored_jax']:8.1f} | dense jax {mem['dense_jax']:9.1f} "
                         f"({mem['dense_jax'] / mem['factored_jax']:6.1f}x) | dense torch {mem['dense_torch']:9.1f} "
                         f"({mem['dense_torch'] / mem['factored_jax']:6.1f}x) | XLA buffers: factored "
                         f"{row['memory']['factored_jax']['xla_mb']:.1f}, "
                         f"dense {row['memory']['dense_jax']['xla_mb']:.1f}")
            line += (f"\n{'':19s} factored vs dense torch: value {row['value_rel']:.1e}, "
                     f"gradient {row['grad_rel']:.1e} "
                     f"(relative); dense jax vs dense torch value {row['dense_jax_value_rel']:.1e}")
            print(line, flush=True)
            result = save_result(args, {"threads": n_threads, "rows": rows})  # after every row: a long run
    return result
