"""Data-parallel scaling: the same steps on 1 device and on N (`llgbm_jax.utils.mesh`), SmolLM2-135M, float32.

    python benchmarks/mesh.py [--devices 1 2 --repeats 5]

Each device count runs in its own process (on the CPU backend, ``XLA_FLAGS=--xla_force_host_platform_device_count``
splits the host into that many devices; on a GPU or TPU host give the real counts). Three workloads, each the
library's own code with its batch split over the mesh's data axis and the rest replicated:
- the generator's ΔW training step (`generator.training.make_train_step`, 8 adapters per step, SmolLM2 shapes);
- a teacher's SFT step (`teachers.sft.train_step`, 8 rows of 64 tokens, the family's length);
- cloze scoring (`scoring.accuracy.score_options`, 32 family questions of 5 options, batches of 16).
Prints steps (or questions) per second per device count and the ratio to one device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def worker(repeats: int) -> dict:
    import jax
    import numpy as np

    from llgbm_jax.base.model import DEFAULT_MODEL, load_base_model
    from llgbm_jax.benchmarks.common import median_time
    from llgbm_jax.generator.config import TrainingConfig
    from llgbm_jax.generator.losses import MultiTaskLoss
    from llgbm_jax.generator.model import create_generator
    from llgbm_jax.generator.training import make_train_step, split_generator
    from llgbm_jax.lora.adapter import LoRAConfig, init_lora, stack_loras
    from llgbm_jax.scoring.accuracy import score_options
    from llgbm_jax.tasks.registry import get_task
    from llgbm_jax.teachers.sft import train_step
    from llgbm_jax.utils import optim
    from llgbm_jax.utils.mesh import data_mesh, replicated, split_along

    n = jax.device_count()
    mesh = data_mesh(n)
    model = load_base_model(DEFAULT_MODEL)
    params = jax.device_put(model.params, replicated(mesh))
    out = {"devices": n, "backend": jax.default_backend()}

    # Generator: ΔW step on 8 adapters (conditions and teacher rows split, parameters replicated).
    config = TrainingConfig(batch_size=8)
    gen = create_generator(config, seed=0, model_config=model.config)
    teachers = stack_loras([init_lora(jax.random.PRNGKey(i), model.config, LoRAConfig(8, 16.0), random_b=True,
                                      b_std=0.01) for i in range(8)])
    gen.fit_output_scale(teachers)
    graphdef, gparams, rest = split_generator(gen)
    tx, _ = optim.adamw(1e-4, 1, 1000)
    step = make_train_step(graphdef, rest, tx, MultiTaskLoss.from_config(config, model.config))
    batch = {"condition": np.random.RandomState(0).normal(size=(1, 8, 4, gen.cond_dim)).astype(np.float32),
             "index": np.arange(8, dtype=np.int32)[None]}
    state = {"p": jax.device_put(gparams, replicated(mesh))}
    state["o"] = jax.device_put(tx.init(gparams), replicated(mesh))
    teachers, batch = jax.device_put(teachers, replicated(mesh)), jax.device_put(batch, split_along(mesh, 1))

    def generator_step():
        state["p"], state["o"], m = step(state["p"], state["o"], teachers, batch, None)
        return float(m["loss"])
    out["generator_steps_per_s"] = 1 / median_time(generator_step, repeats)

    # Teacher: SFT step on 8 rows of 64 tokens, 4 supervised tokens each.
    rng = np.random.RandomState(0)
    b, s, k = 8, 64, 4
    ids = rng.randint(10, model.config.vocab_size, (b, s)).astype(np.int32)
    sft = dict(ids=ids, mask=np.ones((b, s), np.int32), target_pos=np.tile(np.arange(s - k - 1, s - 1, dtype=np.int32),
                                                                             (b, 1)),
               target_ids=ids[:, s - k:], target_mask=np.ones((b, k), np.float32))
    sft = jax.device_put(sft, split_along(mesh, 0))
    lora = init_lora(jax.random.PRNGKey(0), model.config, LoRAConfig(8, 16.0), random_b=True)
    ttx, _ = optim.adamw(1e-4, 1, 1000)
    tstate = {"l": jax.device_put(lora, replicated(mesh))}
    tstate["o"] = jax.device_put(ttx.init(lora), replicated(mesh))

    def teacher_step():
        tstate["l"], tstate["o"], m = train_step(tstate["l"], tstate["o"], params, model.config, ttx, sft, "dots")
        return float(m["loss"])
    out["teacher_steps_per_s"] = 1 / median_time(teacher_step, repeats)

    # Scoring: 32 family questions by cloze.
    task = get_task("fam_add_2")
    records = task.load("eval")[:32]
    prompts = [task.format_prompt(r, model) for r in records]
    options = [task.options(r) for r in records]
    out["scoring_questions_per_s"] = 32 / median_time(
        lambda: score_options(model, prompts, options, None, batch_size=16), repeats)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="device counts to compare")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (medians)")
    ap.add_argument("--out", default=None, help="optional JSON file for the results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.repeats)), flush=True)
        return None
    rows = []
    for n in args.devices:
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        if env.get("JAX_PLATFORMS", "cpu") == "cpu":
            env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        done = subprocess.run([sys.executable, "-m", "llgbm_jax.benchmarks.mesh", "--worker", "--repeats",
                               str(args.repeats)], env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{n} device(s): {done.stderr[-2000:]}")
        rows.append(json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[7:]))
    keys = ("generator_steps_per_s", "teacher_steps_per_s", "scoring_questions_per_s")
    print(f"{'devices':>8} " + " ".join(f"{k:>26}" for k in keys) + f"   (backend {rows[0]['backend']}, "
          f"{os.cpu_count()} cores)")
    for r in rows:
        print(f"{r['devices']:>8} " + " ".join(f"{r[k]:>11.3f} ({r[k] / rows[0][k]:>5.2f}x 1 dev)" for k in keys))
    result = {"rows": rows, "cores": os.cpu_count()}
    if args.out:
        from llgbm_jax.utils.io import write_json_atomic

        write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
