"""PEFT checks: adapters we wrote load in ``PeftModel.from_pretrained`` (any warning, missing or unexpected key is a
failure) and act there as they do in llgbm_jax.

- `verify_zoo`: a sample of a zoo's teachers, logits on two of each adapter's own training prompts against ours.
- `verify_generated`: the generated adapters a main-job run exported, scored on the task's held-out questions in
  PyTorch (`llgbm_jax.evaluation.reference.torch_accuracy`) and with ours, beside the accuracy the run reported.
"""

from __future__ import annotations

import os
import time

from llgbm_jax.utils.io import read_json, write_json_atomic


def verify_adapters(zoo_dir: str, entries, base_model, torch_model, tol: float, prompts_per_adapter: int = 2):
    """One result dict per manifest entry: ``ok``, ``max_abs_logit_diff`` or ``error``."""
    import numpy as np
    import torch

    from llgbm_jax.evaluation.reference import load_peft_strict
    from llgbm_jax.lora.peft import load_peft_adapter

    results = []
    for entry in entries:
        folder = os.path.join(zoo_dir, entry["path"])
        out = {"path": entry["path"], "task": entry["task"], "step": entry["step"]}
        try:
            prompts = read_json(os.path.join(zoo_dir, entry["prompts"]))[:prompts_per_adapter]
            ids, mask = base_model.encode([base_model.chat_prompt(p) for p in prompts])
            ours = np.asarray(base_model.logits(ids, mask, load_peft_adapter(folder)))
            peft_model = load_peft_strict(torch_model, folder)
            with torch.inference_mode():
                ref = peft_model(input_ids=torch.tensor(ids, dtype=torch.long),
                                 attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
            diff = float(np.abs(ours - ref)[mask.astype(bool)].max())
            out.update(ok=diff <= tol, max_abs_logit_diff=diff)
        except Exception as e:  # report every adapter, then fail
            out.update(ok=False, error=f"{type(e).__name__}: {e}")
        results.append(out)
    return results


def read_run(run_dir: str) -> dict:
    """The ``results.json`` of a finished main-job run folder (an error naming the file if it is missing or
    incomplete)."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing (not a finished main-job run folder)")
    results = read_json(path)
    for key in ("config", "exported"):
        if key not in results:
            raise ValueError(f"{path} has no {key!r} key")
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
    from llgbm_jax.evaluation.reference import load_peft_strict, torch_accuracy
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.scoring.accuracy import compute_accuracy_with_lora
    from llgbm_jax.tasks.registry import get_task

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


def format_generated_table(rows: list[dict]) -> str:
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


def verify_zoo(zoo_dir: str, *, sample: int = 8, seed: int = 0, tol: float = 1e-3) -> dict:
    """Check a seeded sample of ``sample`` adapters of the zoo (all with ``sample=0``); prints a line per adapter
    and writes ``zoo_dir/verify.json``. Returns ``{"tol", "results", "ok"}``."""
    import numpy as np

    from llgbm_jax.base import load_base_model
    from llgbm_jax.evaluation.reference import torch_model
    from llgbm_jax.teachers.manifest import read_manifest

    manifest = read_manifest(zoo_dir, required=True)
    entries = manifest["adapters"]
    if sample and sample < len(entries):
        pick = np.random.default_rng(seed).choice(len(entries), sample, replace=False)
        entries = [entries[i] for i in sorted(pick)]
    results = verify_adapters(zoo_dir, entries, load_base_model(manifest["model"]), torch_model(manifest["model"]), tol)
    for r in results:
        detail = f"max |logit diff| {r['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in r else r["error"]
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['path']}: {detail}")
    failed = sum(not r["ok"] for r in results)
    print(f"{len(results) - failed}/{len(results)} adapters load in PEFT and match ours within {tol:g}")
    out = {"tol": tol, "results": results, "ok": failed == 0}
    write_json_atomic(os.path.join(zoo_dir, "verify.json"), out)
    return out


def verify_generated(run_dir: str, *, n: int = 100, tasks=None, data_dir: str | None = None, tolerance: int = 1,
                     batch_size: int = 16, torch_threads: int = 1, out: str | None = None,
                     show_progress: bool = True) -> dict:
    """Check every generated adapter a main-job run exported (or those of ``tasks``) on the first ``n`` held-out
    questions (capped at the n of the run's accuracy table, so the reported number is checked on the same
    questions); prints the table and writes ``out`` (default ``run_dir/verify_generated.json``)."""
    import torch

    from llgbm_jax.base import load_base_model
    from llgbm_jax.evaluation.reference import torch_model, torch_tokenizer
    from llgbm_jax.generator.config import TrainingConfig

    results = read_run(run_dir)
    config = TrainingConfig.from_dict(results["config"], source=os.path.join(run_dir, "results.json"))
    exported = results["exported"]
    tasks = list(tasks or sorted(exported))
    unknown = [t for t in tasks if t not in exported]
    if unknown:
        raise ValueError(f"{run_dir}/results.json exported no adapter for {unknown}; exported: {sorted(exported)}")
    data_dir = data_dir or config.data_dir
    torch.set_num_threads(torch_threads)
    base_model = load_base_model(config.model_name, dtype=config.dtype)
    torch_base, tokenizer = torch_model(config.model_name), torch_tokenizer(config.model_name)
    print(f"verifying {len(tasks)} generated adapter(s) of {run_dir}: {config.model_name}, ours in "
          f"{config.dtype}, PyTorch in float32")
    rows = []
    for t in tasks:
        reported = results.get("accuracy", {}).get(t)
        try:
            folder = adapter_folder(run_dir, t, exported)
        except FileNotFoundError as e:
            rows.append({"task": t, "ok": False, "error": str(e)})
            continue
        rows.append(verify_task(t, folder, min(n, reported["n"]) if reported else n, reported, base_model=base_model,
                                torch_base=torch_base, tokenizer=tokenizer, data_dir=data_dir, tolerance=tolerance,
                                batch_size=batch_size, show_progress=show_progress))
    print(format_generated_table(rows))
    summary = {"run_dir": run_dir, "model": config.model_name, "dtype": config.dtype, "n": n, "tolerance": tolerance,
               "tasks": {r["task"]: r for r in rows}, "ok": all(r["ok"] for r in rows)}
    path = out or os.path.join(run_dir, "verify_generated.json")
    write_json_atomic(path, summary)
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} adapters load in PEFT and score within {tolerance} "
          f"correct answer(s) of ours{' and of results.json' if any(r.get('reported') for r in rows) else ''}; "
          f"saved {path}")
    return summary
