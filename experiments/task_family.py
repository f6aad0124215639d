"""Teachers for every task of the generated family (`llgbm_jax.task_family`), and the baseline a
generator must beat: the mean of the final teachers as one LoRA (`llgbm_jax.lora.mean_lora`, exact).

    python experiments/task_family.py --zoo-dir zoo_family
    python experiments/task_family.py --tasks fam_reverse_words fam_add_3 --steps 32 --eval-samples 100

Trains one teacher per task with `llgbm_jax.teachers.build_zoo` (resumable: finished runs are not
retrained, scores are reused), scores base and final teacher on ``--eval-samples`` test questions by
option log-likelihood (cloze) and by greedy generation with exact match, then scores the mean of all
final teachers on every task the same way (cached in ``<zoo-dir>/mean_of_teachers.json``). Prints the
table (chance level, n, base / teacher / mean-of-teachers accuracy, the teacher's gain with its paired
standard error) and saves it as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

GAIN_BAR = 0.20  # a teacher "has real signal" when its cloze accuracy beats the base by this much


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo-dir", default="zoo_family", help="teacher zoo folder (manifest.json, <task>/run0/...)")
    ap.add_argument("--tasks", nargs="+", help="family tasks (default: all of them)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="base model")
    ap.add_argument("--steps", type=int, default=32, help="training steps per teacher")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--save-every", type=int, default=3, help="steps between the trajectory's adapters")
    ap.add_argument("--adapters-per-run", type=int, default=8, help="adapters exported along each run")
    ap.add_argument("--eval-samples", type=int, default=100, help="test questions scored per task")
    ap.add_argument("--out", default="results/task_family.json", help="JSON of the table")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return ap.parse_args(argv)


def zoo_config(args):
    from llgbm_jax.task_family import family_task_names
    from llgbm_jax.teachers import TeacherConfig, ZooConfig

    teacher = TeacherConfig(steps=args.steps, warmup_steps=min(8, args.steps // 4), save_every=args.save_every,
                            adapters_per_run=args.adapters_per_run, batch_size=args.batch_size,
                            learning_rate=args.lr, max_seq_len=128)
    return ZooConfig(model=args.model, tasks=tuple(args.tasks or family_task_names()), teacher=teacher,
                     eval_samples=args.eval_samples)


def score_mean_of_teachers(zoo_dir: str, cfg, manifest, base_model, *, show_progress: bool = True) -> dict:
    """Cloze and exact-match accuracy of the mean of the final teachers (one LoRA) on every task, with
    per-question hits; cached in ``zoo_dir/mean_of_teachers.json`` per task while the set of teachers
    and the questions are the same."""
    from llgbm_jax.evaluation import compute_accuracy_with_lora, exact_match_accuracy
    from llgbm_jax.io_utils import write_json_atomic
    from llgbm_jax.lora import mean_lora
    from llgbm_jax.peft_io import load_peft_adapter
    from llgbm_jax.tasks import get_task
    from llgbm_jax.teachers import fingerprint

    finals = sorted(a["path"] for a in manifest["adapters"] if a["task"] in cfg.tasks
                    and a["step"] == cfg.teacher_for(a["task"]).steps)
    path = os.path.join(zoo_dir, "mean_of_teachers.json")
    cache = {}
    if os.path.exists(path):
        with open(path) as f:
            cache = json.load(f)
    if cache.get("teachers") != finals:
        cache = {"teachers": finals, "tasks": {}}
    mean = None
    for name in cfg.tasks:
        task = get_task(name)
        records = task.load("eval")[:cfg.eval_samples_for(task)]
        key = fingerprint(records)
        if cache["tasks"].get(name, {}).get("eval_key") == key:
            continue
        if mean is None:
            mean = mean_lora([load_peft_adapter(os.path.join(zoo_dir, p), base_model.config) for p in finals])
        cloze = compute_accuracy_with_lora(mean, base_model, records, task, return_details=True,
                                           show_progress=show_progress)
        em = exact_match_accuracy(mean, base_model, records, task, return_details=True, show_progress=show_progress)
        cache["tasks"][name] = {"eval_key": key, "rank": mean.config.rank,
                                "cloze": cloze["accuracy"], "cloze_hits": [d["correct"] for d in cloze["details"]],
                                "exact_match": em["accuracy"], "exact_match_hits": [d["correct"] for d in em["details"]],
                                "seconds": cloze["seconds"] + em["seconds"]}
        write_json_atomic(path, cache)
    return cache


def family_table(zoo_dir: str, cfg, manifest, mean_scores) -> list[dict]:
    """One row per task: kind, chance level, n, base / teacher / mean-of-teachers cloze accuracy and
    exact match, and the teacher's and the mean's cloze gains over the base (paired, same questions)."""
    from llgbm_jax.evaluation import paired_gain
    from llgbm_jax.task_family import kind_of
    from llgbm_jax.tasks import get_task

    def hits(path):
        with open(path) as f:
            return [d["correct"] for d in json.load(f)]

    rows = []
    for s in manifest["summary"]:
        name = s["task"]
        records = get_task(name).load("eval")[:s["n"]]
        base = hits(os.path.join(zoo_dir, name, "base_test_details.json"))
        m = mean_scores["tasks"][name]
        rows.append({"task": name, "kind": kind_of(name), "n": s["n"],
                     "chance": sum(1 / len(r["options"]) for r in records) / len(records),
                     "base": s["base"], "teacher": s["teacher"], "mean_of_teachers": m["cloze"],
                     "teacher_gain": s["gain"], "teacher_gain_se": s["se"],
                     "mean_gain": paired_gain(base, m["cloze_hits"])["gain"],
                     "base_exact_match": s["base_exact_match"], "teacher_exact_match": s["teacher_exact_match"],
                     "mean_exact_match": m["exact_match"]})
    return rows


def format_table(rows) -> str:
    head = (f"{'task':<22} {'kind':<10} {'n':>4} {'chance':>6}  {'cloze: base':>11} {'teacher':>7} {'mean':>6}  "
            f"{'gain ± SE':<15}  {'exact: base':>11} {'teacher':>7} {'mean':>6}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['task']:<22} {r['kind']:<10} {r['n']:>4} {r['chance']:>6.3f}  {r['base']:>11.3f} "
                     f"{r['teacher']:>7.3f} {r['mean_of_teachers']:>6.3f}  "
                     f"{r['teacher_gain']:+.3f} ± {r['teacher_gain_se']:.3f}  {r['base_exact_match']:>11.3f} "
                     f"{r['teacher_exact_match']:>7.3f} {r['mean_exact_match']:>6.3f}"
                     + ("" if r["teacher_gain"] >= GAIN_BAR else f"  (gain < {GAIN_BAR:.2f})"))
    return "\n".join(lines)


def run(args, base_model=None) -> dict:
    from llgbm_jax.io_utils import write_json_atomic
    from llgbm_jax.models import load_base_model
    from llgbm_jax.teachers import build_zoo

    cfg = zoo_config(args)
    t0 = time.perf_counter()
    base_model = base_model or load_base_model(cfg.model)
    manifest = build_zoo(args.zoo_dir, cfg, base_model=base_model, show_progress=not args.no_progress)
    t_mean = time.perf_counter()
    mean_scores = score_mean_of_teachers(args.zoo_dir, cfg, manifest, base_model, show_progress=not args.no_progress)
    rows = family_table(args.zoo_dir, cfg, manifest, mean_scores)
    result = {"config": json.loads(json.dumps(dataclasses.asdict(cfg), default=list)), "rows": rows,
              "mean_of_teachers_rank": next(iter(mean_scores["tasks"].values()))["rank"],
              "below_gain_bar": [r["task"] for r in rows if r["teacher_gain"] < GAIN_BAR],
              "seconds": {"zoo_total": manifest["seconds"], "train": manifest.get("train_seconds", 0.0),
                          "base_and_teacher_scoring": manifest.get("eval_seconds", 0.0),
                          "mean_of_teachers_scoring": sum(m["seconds"] for m in mean_scores["tasks"].values()),
                          "this_call": time.perf_counter() - t0, "this_call_mean_scoring": time.perf_counter() - t_mean}}
    if args.out:
        write_json_atomic(args.out, result)
    return result


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    s = result["seconds"]
    print(f"\n{len(result['rows'])} family tasks, {args.steps} steps each (lr {args.lr}, batch {args.batch_size}); "
          f"training {s['train'] / 60:.1f} min, base and teacher scoring {s['base_and_teacher_scoring'] / 60:.1f} min, "
          f"mean-of-teachers (rank {result['mean_of_teachers_rank']}) scoring {s['mean_of_teachers_scoring'] / 60:.1f} min\n")
    print(format_table(result["rows"]))
    print(f"\nteachers below +{GAIN_BAR:.2f} cloze gain: {', '.join(result['below_gain_bar']) or 'none'}")
    if args.out:
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
