"""One teacher run on a multiple-choice task, scored at several checkpoints: the pilot behind the
README's teacher findings.

    python experiments/teacher_pilot.py --task arc_e --steps 100 --lr 1e-3 --save-every 30
    python experiments/teacher_pilot.py --task arc_e_cloze --steps 80 --lr 5e-4 --save-every 40 --eval test --n-eval 400

``arc_e``/``obqa``: letter answers (options listed in the prompt, response ``[B]``, options scored as
``[A]``..``[D]``). ``arc_e_cloze``/``obqa_cloze``: the question alone, the response is the gold answer's
text and the options are scored as texts. ``fam_*``: the generated task family (`llgbm_jax.task_family`).
``--eval val`` scores 300 train questions held out of training (for tuning); ``--eval test`` the first
``--n-eval`` test questions. Prints base and checkpoint accuracy with the paired gain.
"""

from __future__ import annotations

import argparse
import tempfile


def main(argv=None):
    from llgbm_jax.task_family import family_task_names

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="arc_e",
                    choices=["arc_e", "obqa", "arc_e_cloze", "obqa_cloze"] + family_task_names())
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--save-every", type=int, default=30, help="checkpoints scored: steps, steps - k, steps - 2k")
    ap.add_argument("--eval", default="val", choices=["val", "test"])
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--data-dir", help="task data folder (default: $LLGBM_DATA_DIR or ./data)")
    args = ap.parse_args(argv)
    import numpy as np

    from llgbm_jax.evaluation import paired_gain, score_options
    from llgbm_jax.models import load_base_model
    from llgbm_jax.peft_io import load_peft_adapter
    from llgbm_jax.tasks import get_task
    from llgbm_jax.teachers import TeacherConfig, train_run

    base_model = load_base_model("smollm2-135m-instruct")
    task = get_task(args.task, args.data_dir)
    train = task.load("train", args.data_dir)
    order = np.random.default_rng(0).permutation(len(train))
    if args.eval == "val":
        scored, train = [train[i] for i in order[:300]], [train[i] for i in order[300:]]
    else:
        scored = task.load("eval", args.data_dir)[:args.n_eval]
    prompts = [task.format_prompt(r, base_model) for r in scored]
    options = [list(task.options(r)) for r in scored]
    golds = [o.index(task.answer(r)) for o, r in zip(options, scored)]

    def hits(lora):
        scores, _ = score_options(base_model, prompts, options, lora, show_progress=False)
        return [int(np.argmax(s)) == g for s, g in zip(scores, golds)]

    base = hits(None)
    print(f"{args.task}, {args.eval} n={len(golds)}: base {np.mean(base):.3f}", flush=True)
    warmup = 8
    saves = min(3, len(range(args.steps, warmup, -args.save_every)))
    cfg = TeacherConfig(steps=args.steps, warmup_steps=warmup, save_every=args.save_every, adapters_per_run=saves,
                        learning_rate=args.lr, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory() as run_dir:
        res = train_run(base_model, task, train, cfg, run_dir, seed=1)
        loss = np.asarray(res.history["loss"])
        print(f"{res.seconds / args.steps:.2f} s/step; loss per 10 steps "
              f"{[round(float(loss[i:i + 10].mean()), 3) for i in range(0, len(loss), 10)]}")
        for a in res.adapters:
            g = paired_gain(base, hits(load_peft_adapter(a["path"])))
            print(f"step {a['step']:4d}: accuracy {np.mean(base) + g['gain']:.3f}, gain {g['gain']:+.3f} ± {g['se']:.3f} "
                  f"({g['gain_in_se']:.1f} SE)", flush=True)


if __name__ == "__main__":
    main()
