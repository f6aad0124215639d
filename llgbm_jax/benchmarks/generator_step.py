"""One generator training step, ours vs PyTorch written the research code's way; SmolLM2-135M shapes, one process.

    python benchmarks/generator_step.py [--batch 4 --rank 8 --repeats 3] [--threads N] [--tiny] [--out f.json]

Both sides hold the same generator (`llgbm_jax.generator.LoRAGenerator`: condition ⊕ layer ⊕ module
embedding → 2-layer trunk → one A/B head pair per module type; ≈42.6M parameters at SmolLM2 shapes, r 8)
with the same weights, and take the same batch: ``--batch`` conditions and as many random teacher LoRAs.
  ours:  one `jax.jit` (state donated): generator forward for all layers and modules at once, the ΔW loss
         from the factors (`llgbm_jax.generator.losses.DeltaWLoss`, plain MSE, no out × in matrix), optax AdamW.
  torch: the same module as a `torch.nn.Module` (trunk and heads batched like ours), then the research
         code's loss: a Python loop over modules and layers forming the dense ΔW = s·B@A of prediction and
         teacher and their squared error (``((ΔW_p − ΔW_t)²).sum() / numel``; the research code's
         ``F.mse_loss`` would also keep every teacher ΔW for the backward pass), backward, torch AdamW.
Same AdamW settings, same thread count, calls timed round-robin (medians; the first two steps of each
side, which compile and warm up, are not timed). Prints both parameter counts, milliseconds per step (wall
and process CPU time, the latter steadier on a shared machine) and the ratio (target >= 10x), the first two
losses of both sides (the second after one update), which must agree, and the process's peak memory (the
torch side keeps every ΔW difference for its backward pass: 1.7 GB at SmolLM2 shapes and batch 4).
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import statistics
import time

from llgbm_jax.benchmarks.common import interleaved_medians, parse_args, save_result

LR, WEIGHT_DECAY, B_STD = 1e-3, 0.01, 0.02


def return_freed_memory_to_the_os():
    """glibc: serve allocations over 1 MiB by mmap, so the torch side's freed ΔW blocks go back to the OS at
    once (glibc's adaptive threshold otherwise keeps them in its heap and the process grows step by step)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def torch_generator(gen):
    """A `torch.nn.Module` with the same parameters as the nnx ``gen`` (copied), batched like ours."""
    import numpy as np
    import torch
    from torch import nn

    mc, lc = gen.model_config, gen.lora_config
    linear = lambda lin: _copy_linear(nn.Linear(*lin.kernel.shape), lin)

    class TorchGenerator(nn.Module):
        def __init__(self):
            super().__init__()
            t = lambda x: torch.tensor(np.asarray(x[...]))
            self.register_buffer("cond_mean", t(gen.cond_mean))
            self.register_buffer("cond_scale", t(gen.cond_scale))
            self.register_buffer("a_scale", t(gen.a_scale))
            self.register_buffer("b_scale", t(gen.b_scale))
            self.cond_proj = linear(gen.cond_proj)
            self.layer_emb, self.module_emb = nn.Parameter(t(gen.layer_emb)), nn.Parameter(t(gen.module_emb))
            self.trunk = nn.ModuleList([linear(l) for l in gen.trunk])
            self.trunk_norms = nn.ModuleList([_copy_norm(n) for n in gen.trunk_norms])
            self.out_norm = _copy_norm(gen.out_norm)
            self.a_heads = nn.ModuleDict({m: linear(gen.a_heads[m]) for m in lc.target_modules})
            self.b_heads = nn.ModuleDict({m: linear(gen.b_heads[m]) for m in lc.target_modules})

        def forward(self, cond):
            c = self.cond_proj((cond - self.cond_mean) / self.cond_scale)
            n, (L, E), M = c.shape[0], self.layer_emb.shape, self.module_emb.shape[0]
            x = torch.cat([c[:, None, None].expand(n, L, M, -1), self.layer_emb[None, :, None].expand(n, L, M, E),
                           self.module_emb[None, None].expand(n, L, M, E)], -1)
            for i, (lin, norm) in enumerate(zip(self.trunk, self.trunk_norms)):
                y = torch.nn.functional.silu(norm(lin(x)))
                x = y if i == 0 else x + y
            z = self.out_norm(x)
            A, B = {}, {}
            for j, m in enumerate(lc.target_modules):
                out, inp = mc.module_shapes[m]
                A[m] = (self.a_scale[j] * self.a_heads[m](z[:, :, j])).reshape(n, L, lc.rank, inp)
                B[m] = (self.b_scale[j] * self.b_heads[m](z[:, :, j])).reshape(n, L, out, lc.rank)
            return A, B

    return TorchGenerator()


def _copy_linear(lin, src):
    import numpy as np
    import torch

    with torch.no_grad():
        lin.weight.copy_(torch.tensor(np.asarray(src.kernel[...]).T))
        lin.bias.copy_(torch.tensor(np.asarray(src.bias[...])))
    return lin


def _copy_norm(src):
    import numpy as np
    import torch

    norm = torch.nn.LayerNorm(src.scale.shape[0], eps=src.epsilon)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(np.asarray(src.scale[...])))
        norm.bias.copy_(torch.tensor(np.asarray(src.bias[...])))
    return norm


def research_delta_w_loss(A, B, teacher_A, teacher_B, scaling: float, teacher_scaling: float):
    """The research code's ΔW MSE: a Python loop over modules and layers, dense ΔW = s·B@A of both sides."""
    total, count = 0.0, 0
    for m in A:
        for l in range(A[m].shape[1]):
            dw_pred = B[m][:, l] @ A[m][:, l] * scaling
            dw_teacher = teacher_B[m][:, l] @ teacher_A[m][:, l] * teacher_scaling
            diff = dw_pred - dw_teacher
            total = total + (diff * diff).sum()
            count += diff.numel()
    return total / count


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="conditions (and teachers) per step")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (for tests): checks agreement, times nothing real")
    args, n_threads = parse_args(ap, argv, repeats=3)
    return_freed_memory_to_the_os()
    import functools

    import jax
    import numpy as np
    import optax
    import torch
    from flax import nnx

    from llgbm_jax.base.config import ModelConfig
    from llgbm_jax.generator.config import TrainingConfig
    from llgbm_jax.generator.losses import DeltaWLoss
    from llgbm_jax.generator.model import create_generator, generator_fn
    from llgbm_jax.lora.adapter import LoRAConfig, init_lora, stack_loras

    if args.tiny:
        mc = ModelConfig("llama", 160, 64, 96, 2, 4, 2, 16)
        config = TrainingConfig(lora_rank=args.rank, lora_alpha=2.0 * args.rank, generator_hidden=48, embedding_dim=8)
    else:  # SmolLM2-135M's shapes (no weights needed)
        mc = ModelConfig("llama", 49152, 576, 1536, 30, 9, 3, 64)
        config = TrainingConfig(lora_rank=args.rank, lora_alpha=2.0 * args.rank)
    n, r = args.batch, args.rank
    print(f"threads: {n_threads} | jax {jax.__version__} | torch {torch.__version__} | batch {n} | r={r} on 7 modules, "
          f"{mc.num_layers} layers | float32 | AdamW")

    gen = create_generator(config, seed=0, model_config=mc)
    cond = jax.random.normal(jax.random.PRNGKey(1), (n, gen.cond_dim))
    gen.fit_condition_normalizer(np.asarray(cond))
    teacher_cfg = LoRAConfig(r, 2.0 * r)
    teachers = stack_loras([init_lora(jax.random.PRNGKey(10 + i), mc, teacher_cfg, random_b=True, b_std=B_STD)
                            for i in range(n)])
    gen.fit_output_scale(teachers)  # as train() does
    torch_gen = torch_generator(gen)  # before any update: the same weights on both sides
    n_ours, n_torch = gen.num_params(), sum(p.numel() for p in torch_gen.parameters())
    print(f"parameters: ours {n_ours:,}, torch {n_torch:,}")

    # --- ours: one jitted step, state donated --------------------------------------------------------------------
    graphdef, params0, rest = nnx.split(gen, nnx.Param, ...)
    apply = generator_fn(graphdef, rest)
    loss_fn = DeltaWLoss(config.lora_alpha, config.lora_rank)
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, cond, teachers):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(apply(p, cond), teachers))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = {"params": params0, "opt": tx.init(params0)}

    def ours_step():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], cond, teachers)
        return float(loss)

    # --- torch: the research code's way ------------------------------------------------------------------------
    cond_t = torch.tensor(np.asarray(cond))
    teacher_A = {m: torch.tensor(np.asarray(teachers.A[m])) for m in teachers.modules}
    teacher_B = {m: torch.tensor(np.asarray(teachers.B[m])) for m in teachers.modules}
    opt = torch.optim.AdamW(torch_gen.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def torch_step():
        A, B = torch_gen(cond_t)
        loss = research_delta_w_loss(A, B, teacher_A, teacher_B, gen.lora_config.scaling, teacher_cfg.scaling)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    first = {"ours": [ours_step(), ours_step()], "torch": [torch_step(), torch_step()]}
    cpu = {"ours": [], "torch": []}  # process CPU seconds per call: steadier than wall time on a busy machine

    def cpu_timed(name, fn):
        def run():
            t0 = time.process_time()
            fn()
            cpu[name].append(time.process_time() - t0)
        return run

    t = interleaved_medians({k: cpu_timed(k, f) for k, f in (("ours", ours_step), ("torch", torch_step))},
                            args.repeats, warmup=0)
    cpu = {k: statistics.median(v) for k, v in cpu.items()}
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    ratio = t["torch"] / t["ours"]
    for k, v in t.items():
        print(f"  {k:6s} {v * 1e3:9.1f} ms/step  (CPU time {cpu[k] * 1e3:9.1f} ms)")
    print(f"speed ours / torch (research way): {ratio:.1f}x (target >= 10x); in CPU time "
          f"{cpu['torch'] / cpu['ours']:.1f}x")
    print(f"loss before any update: ours {first['ours'][0]:.6e}, torch {first['torch'][0]:.6e}; after one update: "
          f"ours {first['ours'][1]:.6e}, torch {first['torch'][1]:.6e}")
    print(f"peak memory of the process (both sides): {peak_gb:.2f} GiB")
    result = dict(threads=n_threads, batch=n, rank=r, tiny=args.tiny, num_layers=mc.num_layers,
                  params={"ours": n_ours, "torch": n_torch}, ms_per_step={k: v * 1e3 for k, v in t.items()},
                  cpu_ms_per_step={k: v * 1e3 for k, v in cpu.items()}, ours_over_torch_speed=ratio,
                  ours_over_torch_cpu_time=cpu["torch"] / cpu["ours"], losses=first, peak_rss_gib=peak_gb)
    return save_result(args, result)
