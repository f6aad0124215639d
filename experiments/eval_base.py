"""Base-model accuracy per task (`llgbm_jax.evaluation`), beside the majority-class baseline.

    python experiments/eval_base.py --data-dir ../shared/data --out results/base_accuracy.json
    python experiments/eval_base.py --tasks arc_e --max-samples 100     # quick throughput check

mcq/bool tasks are scored by option log-likelihood (no parse failures; ``acc_norm`` divides by the
answer's length in characters), GSM8K by greedy generation. Prints, per task: n, accuracy,
length-normalised accuracy, Wilson 95% interval, parse failures, wall time (compilation included),
questions per second, and the majority baseline (the share of the most frequent gold answer among the
evaluated questions). Then the ARC-e throughput and the projected time for 500 ARC-e questions.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

DEFAULT_TASKS = ("arc_e", "boolq", "obqa", "gsm8k")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="registered task names")
    ap.add_argument("--max-samples", type=int, help="first N evaluation questions per task (default: all)")
    ap.add_argument("--out", default="results/base_accuracy.json", help="JSON results file ('' to skip)")
    ap.add_argument("--data-dir", help="task data folder (default: $LLGBM_DATA_DIR or ./data)")
    ap.add_argument("--model", default=None, help="embedded name, .gguf, HF folder or hub id (default: SmolLM2-135M)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch-size", type=int, help="questions per batch (default: 8 for mcq/bool, 16 for gsm8k)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="GSM8K generation budget")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return ap.parse_args(argv)


def _fmt_ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def format_table(results: dict) -> str:
    head = ("task", "n", "acc", "acc_norm", "95% CI", "parse fail", "majority", "time s", "q/s")
    rows = []
    for name, r in results.items():
        norm = f"{r['accuracy_norm']:.3f}" if "accuracy_norm" in r else "-"
        rows.append((name, str(r["total"]), f"{r['accuracy']:.3f}", norm, _fmt_ci(r["ci95"]), str(r["parse_failures"]),
                     f"{r['majority_baseline']:.3f} {r['majority_label']}", f"{r['seconds']:.1f}",
                     f"{r['questions_per_s']:.2f}"))
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main(argv=None):
    args = parse_args(argv)
    import jax

    from llgbm_jax.evaluation import compute_base_accuracy
    from llgbm_jax.io_utils import write_json_atomic
    from llgbm_jax.models import DEFAULT_MODEL, load_base_model
    from llgbm_jax.tasks import get_data_dir, get_task

    tasks = [get_task(name, args.data_dir) for name in args.tasks]
    evals = {t.name: t.load("eval", args.data_dir) for t in tasks}  # fail on a missing file before any work
    model_name = args.model or DEFAULT_MODEL
    t0 = time.perf_counter()
    model = load_base_model(model_name, dtype=args.dtype)
    print(f"loaded {model_name} ({args.dtype}) in {time.perf_counter() - t0:.1f}s; data: {get_data_dir(args.data_dir)}")

    def save():  # after every task, so a killed run keeps what it measured
        if args.out:
            write_json_atomic(args.out, {
                "model": model_name, "dtype": args.dtype, "data_dir": os.path.abspath(get_data_dir(args.data_dir)),
                "max_samples": args.max_samples, "max_new_tokens": args.max_new_tokens,
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                            "jax_backend": jax.default_backend(), "load_average": os.getloadavg()},
                "tasks": results})

    results = {}
    for task in tasks:
        records = evals[task.name][:args.max_samples] if args.max_samples else evals[task.name]
        res = compute_base_accuracy(model, records, None, task, None, not args.no_progress,
                                    batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        label, share = task.majority_baseline(records)
        res.update(majority_label=f"{label:g}" if isinstance(label, float) else str(label), majority_baseline=share)
        results[task.name] = res
        save()
        print(f"{task.name}: {res['correct']}/{res['total']} = {res['accuracy']:.3f} {_fmt_ci(res['ci95'])}, "
              f"{res['seconds']:.1f}s, {res['compiled_programs']} XLA programs compiled", flush=True)

    print("\n" + format_table(results))
    if "arc_e" in results:
        r = results["arc_e"]
        print(f"\nARC-e throughput: {r['questions_per_s']:.2f} questions/s (compilation included) -> 500 questions "
              f"in {500 / r['questions_per_s']:.0f}s (target < 180s)")
    if args.out:
        print(f"wrote {args.out}")

if __name__ == "__main__":
    main()
