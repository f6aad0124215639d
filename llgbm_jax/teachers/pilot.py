"""One teacher run scored at several checkpoints: the pilot behind the teacher findings in docs/teachers.md
(``llgbm-jax pilot``).

``arc_e``/``obqa``: letter answers (options listed in the prompt, response ``[B]``, options scored as
``[A]``..``[D]``). ``arc_e_cloze``/``obqa_cloze``: the question alone, the response is the gold answer's text and
the options are scored as texts. ``fam_*``: the generated task family. ``split="val"`` scores 300 train questions
held out of training (for tuning); ``"test"`` the first ``n_eval`` test questions.
"""

from __future__ import annotations

import tempfile


def teacher_pilot(task_name: str = "arc_e", *, steps: int = 100, lr: float = 1e-3, save_every: int = 30,
                  split: str = "val", n_eval: int = 300, data_dir: str | None = None, base_model=None) -> dict:
    """Train one teacher on ``task_name`` and print (and return) base and checkpoint accuracy with paired gains."""
    import numpy as np

    from llgbm_jax.base import load_base_model
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.scoring.accuracy import score_options
    from llgbm_jax.scoring.stats import paired_gain
    from llgbm_jax.tasks.registry import get_task
    from llgbm_jax.teachers.run import TeacherConfig, train_run

    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    base_model = base_model or load_base_model()
    task = get_task(task_name, data_dir)
    train = task.load("train", data_dir)
    order = np.random.default_rng(0).permutation(len(train))
    if split == "val":
        scored, train = [train[i] for i in order[:300]], [train[i] for i in order[300:]]
    else:
        scored = task.load("eval", data_dir)[:n_eval]
    prompts = [task.format_prompt(r, base_model) for r in scored]
    options = [list(task.options(r)) for r in scored]
    golds = [o.index(task.answer(r)) for o, r in zip(options, scored)]

    def hits(lora):
        scores, _ = score_options(base_model, prompts, options, lora, show_progress=False)
        return [int(np.argmax(s)) == g for s, g in zip(scores, golds)]

    base = hits(None)
    print(f"{task_name}, {split} n={len(golds)}: base {np.mean(base):.3f}", flush=True)
    warmup = 8
    saves = min(3, len(range(steps, warmup, -save_every)))
    cfg = TeacherConfig(steps=steps, warmup_steps=warmup, save_every=save_every, adapters_per_run=saves,
                        learning_rate=lr, checkpoint_every=10**9)
    out = {"task": task_name, "split": split, "n": len(golds), "base": float(np.mean(base)), "checkpoints": []}
    with tempfile.TemporaryDirectory() as run_dir:
        res = train_run(base_model, task, train, cfg, run_dir, seed=1)
        loss = np.asarray(res.history["loss"])
        print(f"{res.seconds / steps:.2f} s/step; loss per 10 steps "
              f"{[round(float(loss[i:i + 10].mean()), 3) for i in range(0, len(loss), 10)]}")
        for a in res.adapters:
            g = paired_gain(base, hits(load_peft_adapter(a["path"])))
            out["checkpoints"].append({"step": a["step"], **g})
            print(f"step {a['step']:4d}: accuracy {np.mean(base) + g['gain']:.3f}, "
                  f"gain {g['gain']:+.3f} ± {g['se']:.3f} ({g['gain_in_se']:.1f} SE)", flush=True)
    return out
