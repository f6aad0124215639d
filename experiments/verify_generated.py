"""Check that the generated adapters a main-job run exported load in PEFT and score, in PyTorch, the
accuracy we report for them.

    python experiments/verify_generated.py --run-dir runs/delta_w [--n 100] [--tasks arc_e_cloze boolq]

For every task in ``RUN/results.json``'s ``exported`` (or ``--tasks``): load ``RUN/generated/<task>`` with
``PeftModel.from_pretrained`` on transformers' model of the run's base model (any warning, missing or
unexpected key is a failure), score the task's first ``n`` held-out questions in PyTorch
(`llgbm_jax.reference.torch_accuracy`: option log-likelihood, gsm8k by greedy generation) and with ours
(`compute_accuracy_with_lora` on `load_peft_adapter` of the same folder), and print n, PEFT accuracy,
ours, the questions whose predictions differ, and whether the numbers of correct answers are within
``--tolerance`` (default 1: "within one example on 100 questions"). ``n`` is capped at the n of
results.json's accuracy table for the task, so the reported number is checked on the same questions
(its ``generated`` count must then be within the tolerance of PEFT's and of ours too).
Writes ``RUN/verify_generated.json``; exits with status 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a main-job run folder (results.json, generated/<task>/)")
    ap.add_argument("--n", type=int, default=100, help="held-out questions per task (capped at results.json's n)")
    ap.add_argument("--tasks", nargs="+", help="tasks to check (default: every exported adapter)")
    ap.add_argument("--data-dir", help="task data folder (default: the run config's, else $LLGBM_DATA_DIR)")
    ap.add_argument("--tolerance", type=int, default=1, help="allowed |difference| in correct answers")
    ap.add_argument("--batch-size", type=int, default=16, help="PyTorch rows per forward / prompts per generate")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch threads (1: on a small shared CPU more threads oversubscribe the cores)")
    ap.add_argument("--out", help="result JSON (default RUN/verify_generated.json)")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def read_run(run_dir: str) -> dict:
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        raise SystemExit(f"verify_generated.py: {path} is missing (not a finished main-job run folder)")
    with open(path) as f:
        results = json.load(f)
    for key in ("config", "exported"):
        if key not in results:
            raise SystemExit(f"verify_generated.py: {path} has no {key!r} key")
    return results


def adapter_folder(run_dir: str, task: str, exported: dict) -> str:
    """``RUN/generated/<task>`` (the run folder may have moved since), else the recorded path."""
    for folder in (os.path.join(run_dir, "generated", task), exported.get(task)):
        if folder and os.path.isfile(os.path.join(folder, "adapter_config.json")):
            return folder
    raise FileNotFoundError(f"{run_dir}: no PEFT folder for task {task!r} (neither generated/{task}/ nor "
                            f"{exported.get(task)!r} holds an adapter_config.json)")


def compare(peft: dict, ours: dict, task_type: str) -> dict:
    """Per-question agreement of two `torch_accuracy`/`compute_accuracy_with_lora` detail lists."""
    import numpy as np

    pairs = list(zip(peft["details"], ours["details"]))
    differ = [i for i, (a, b) in enumerate(pairs) if a["pred"] != b["pred"]]
    out = {"differing_predictions": len(differ), "differing_questions": differ}
    if task_type == "gsm8k":
        out["identical_texts"] = sum(a["text"] == b["text"] for a, b in pairs)
    else:
        out["max_abs_logprob_diff"] = max(float(np.max(np.abs(np.subtract(a["logprobs"], b["logprobs"]))))
                                          for a, b in pairs)
        # How close the top two options of each differing question are (PEFT's scores).
        out["differing_top2_margins"] = [float(-np.diff(np.sort(pairs[i][0]["logprobs"])[-2:][::-1])[0])
                                         for i in differ]
    return out


def verify_task(task_name: str, folder: str, n: int, reported: dict | None, *, base_model, torch_base, tokenizer,
                data_dir, tolerance: int, batch_size: int, show_progress: bool) -> dict:
    """One task: PEFT load, PyTorch and our accuracy on the first ``n`` held-out questions, the checks."""
    from llgbm_jax.evaluation import compute_accuracy_with_lora
    from llgbm_jax.peft_io import load_peft_adapter
    from llgbm_jax.reference import load_peft_strict, torch_accuracy
    from llgbm_jax.tasks import get_task

    out = {"task": task_name, "adapter": folder}
    try:
        task = get_task(task_name, data_dir)
        records = task.load("eval", data_dir)[:n]
        out.update(task_type=task.task_type, n=len(records))
        t0 = time.perf_counter()
        peft_model = load_peft_strict(torch_base, folder)
        peft = torch_accuracy(peft_model, tokenizer, task, records, base_model, batch_size=batch_size,
                              show_progress=show_progress)
        del peft_model
        out["peft_seconds"] = time.perf_counter() - t0
        ours = compute_accuracy_with_lora(load_peft_adapter(folder, base_model.config), base_model, records, task,
                                          return_details=True, show_progress=show_progress)
        out["ours_seconds"] = ours["seconds"]
    except Exception as e:  # report every task, then fail
        out.update(ok=False, error=f"{type(e).__name__}: {e}")
        return out
    out["peft"] = {"accuracy": peft["accuracy"], "correct": peft["correct"]}
    out["ours"] = {"accuracy": ours["accuracy"], "correct": ours["correct"]}
    out.update(compare(peft, ours, task.task_type))
    checks = {"peft_vs_ours": abs(peft["correct"] - ours["correct"]) <= tolerance}
    if reported is not None and reported.get("n") == len(records):
        rep = reported["generated"]
        out["reported"] = {"accuracy": rep["accuracy"], "correct": rep["correct"]}
        checks["reported_vs_peft"] = abs(rep["correct"] - peft["correct"]) <= tolerance
        checks["reported_vs_ours"] = abs(rep["correct"] - ours["correct"]) <= tolerance
    else:
        out["reported"] = None  # no accuracy table for the task, or it was computed on other questions
    out["checks"] = checks
    out["ok"] = all(checks.values())
    return out


def format_table(rows: list[dict]) -> str:
    head = ("task", "n", "PEFT", "ours", "reported", "differ", "max |Δ logp|", "within tol.")
    lines = []
    for r in rows:
        if "error" in r:
            lines.append((r["task"], str(r.get("n", "-")), "error", r["error"][:60], "", "", "", "FAIL"))
            continue
        acc = lambda x: "-" if x is None else f"{x['accuracy']:.3f} ({x['correct']})"
        lines.append((r["task"], str(r["n"]), acc(r["peft"]), acc(r["ours"]), acc(r["reported"]),
                      str(r["differing_predictions"]),
                      f"{r['max_abs_logprob_diff']:.1e}" if "max_abs_logprob_diff" in r else "(generation)",
                      "yes" if r["ok"] else "FAIL " + ",".join(k for k, v in r["checks"].items() if not v)))
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(x) for x in lines])


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from llgbm_jax.config import TrainingConfig
    from llgbm_jax.io_utils import write_json_atomic
    from llgbm_jax.models import load_base_model
    from llgbm_jax.reference import torch_model, torch_tokenizer

    results = read_run(args.run_dir)
    config = TrainingConfig.from_dict(results["config"], source=os.path.join(args.run_dir, "results.json"))
    exported = results["exported"]
    tasks = args.tasks or sorted(exported)
    unknown = [t for t in tasks if t not in exported]
    if unknown:
        raise SystemExit(f"verify_generated.py: {args.run_dir}/results.json exported no adapter for {unknown}; "
                         f"exported: {sorted(exported)}")
    data_dir = args.data_dir or config.data_dir
    torch.set_num_threads(args.torch_threads)
    base_model = load_base_model(config.model_name, dtype=config.dtype)
    torch_base, tokenizer = torch_model(config.model_name), torch_tokenizer(config.model_name)
    print(f"verifying {len(tasks)} generated adapter(s) of {args.run_dir}: {config.model_name}, ours in "
          f"{config.dtype}, PyTorch in float32")
    rows = []
    for t in tasks:
        reported = results.get("accuracy", {}).get(t)
        n = min(args.n, reported["n"]) if reported else args.n
        try:
            folder = adapter_folder(args.run_dir, t, exported)
        except FileNotFoundError as e:
            rows.append({"task": t, "ok": False, "error": str(e)})
            continue
        rows.append(verify_task(t, folder, n, reported, base_model=base_model, torch_base=torch_base,
                                tokenizer=tokenizer, data_dir=data_dir, tolerance=args.tolerance,
                                batch_size=args.batch_size, show_progress=not args.no_progress))
    print(format_table(rows))
    out = {"run_dir": args.run_dir, "model": config.model_name, "dtype": config.dtype, "n": args.n,
           "tolerance": args.tolerance, "tasks": {r["task"]: r for r in rows}, "ok": all(r["ok"] for r in rows)}
    path = args.out or os.path.join(args.run_dir, "verify_generated.json")
    write_json_atomic(path, out)
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} adapters load in PEFT and score within {args.tolerance} "
          f"correct answer(s) of ours{' and of results.json' if any(r.get('reported') for r in rows) else ''}; "
          f"saved {path}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
