"""Behavioural deltas of every adapter in a zoo, and whether they tell the tasks apart (``llgbm-jax deltas``).

Computes (or reads from the `DeltaCache`) the delta of every adapter in the zoo's manifest on its base model, on
the probe set of `build_probes`, and summarises them: the task × task matrix of mean delta cosine (diagonal: mean
over distinct pairs of the task's adapters; off-diagonal: mean over all pairs from the two tasks), the delta norms
per task, and per task whether its within-task cosine is higher than its cosine to every other task.
"""

from __future__ import annotations

import os
import time

from llgbm_jax.utils.io import write_json_atomic


def task_summary(deltas, labels) -> dict:
    """Cosine matrix, norms and within-vs-across verdicts of ``deltas`` ``[N, H]`` grouped by ``labels``."""
    import numpy as np

    tasks = list(dict.fromkeys(labels))
    labels = np.asarray(labels)
    norms = np.linalg.norm(deltas, axis=1)
    unit = deltas / np.maximum(norms, 1e-30)[:, None]
    cos = unit @ unit.T
    matrix = np.full((len(tasks), len(tasks)), np.nan)
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            block = cos[np.ix_(labels == a, labels == b)]
            if i == j:
                n = block.shape[0]
                if n > 1:
                    matrix[i, j] = (block.sum() - np.trace(block)) / (n * (n - 1))
            else:
                matrix[i, j] = block.mean()
    within_highest, verdicts = {}, []
    for i, t in enumerate(tasks):
        others = np.delete(matrix[i], i)
        if np.isnan(matrix[i, i]) or not others.size:
            within_highest[t] = None
            verdicts.append(f"{t}: undefined ({'fewer than two adapters' if others.size else 'no other task'})")
            continue
        best = float(np.nanmax(others))
        within_highest[t] = bool(matrix[i, i] > best)
        verdicts.append(f"{t}: within-task cosine {matrix[i, i]:.3f} is "
                        f"{'HIGHER' if within_highest[t] else 'NOT higher'} than its cosine to every other task "
                        f"(highest other {best:.3f})")
    group = lambda t: norms[labels == t]
    return {
        "tasks": tasks,
        "adapters_per_task": {t: int((labels == t).sum()) for t in tasks},
        "cosine": [[None if np.isnan(v) else float(v) for v in row] for row in matrix],
        "norms": {t: {"mean": float(group(t).mean()), "sd": float(group(t).std(ddof=1)) if group(t).size > 1 else 0.0}
                  for t in tasks},
        "within_highest": within_highest,
        "verdicts": verdicts,
    }


def format_summary(s: dict) -> str:
    tasks = s["tasks"]
    width = max(len(t) for t in tasks) + 2
    lines = ["mean delta cosine (rows/columns: tasks; diagonal: distinct pairs within the task)",
             " " * width + "".join(f"{t:>{width}}" for t in tasks)]
    for t, row in zip(tasks, s["cosine"]):
        lines.append(f"{t:<{width}}" + "".join(f"{'n/a' if v is None else format(v, '.3f'):>{width}}" for v in row))
    lines.append("delta norm per task (mean ± sd over adapters):")
    lines += [f"  {t:<{width}} {s['norms'][t]['mean']:.4g} ± {s['norms'][t]['sd']:.2g}  "
              f"(n={s['adapters_per_task'][t]})" for t in tasks]
    return "\n".join(lines + s["verdicts"])


def plot_matrix(summary: dict, path: str) -> str:
    from llgbm_jax.utils.figures import pyplot, save_figure

    plt = pyplot()
    import numpy as np

    tasks = summary["tasks"]
    m = np.array([[np.nan if v is None else v for v in row] for row in summary["cosine"]])
    fig, ax = plt.subplots(figsize=(4 + 1.1 * len(tasks), 3 + 1.0 * len(tasks)))
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            ax.text(j, i, "n/a" if np.isnan(m[i, j]) else f"{m[i, j]:.2f}", ha="center", va="center",
                    color="k" if np.isnan(m[i, j]) else "w")
    fig.colorbar(im, ax=ax, label="mean cosine")
    ax.set_title("behavioural delta cosine, task x task")
    return save_figure(fig, path, dpi=120)


def delta_study(zoo_dir: str, *, num_probes: int = 32, max_probe_length: int = 128, seed: int = 0,
                probe_tasks=None, cache_dir: str | None = None, out_dir: str | None = None, model: str | None = None,
                data_dir: str | None = None, batch_size: int = 8, show_progress: bool = True) -> dict:
    """Deltas of every adapter of the zoo and their `task_summary`; prints it and saves ``deltas_matrix.png`` and
    ``deltas.json`` in ``out_dir`` (default the zoo folder). ``probe_tasks`` defaults to `default_probe_tasks`,
    ``cache_dir`` to ``zoo_dir/deltas``, ``model`` to the manifest's."""
    from llgbm_jax.base import DEFAULT_MODEL, load_base_model
    from llgbm_jax.conditions.deltas import DeltaCache
    from llgbm_jax.conditions.probes import build_probes, default_probe_tasks
    from llgbm_jax.teachers.manifest import read_manifest

    t0 = time.perf_counter()
    manifest = read_manifest(zoo_dir, required=True)
    entries = manifest["adapters"]
    if not entries:
        raise ValueError(f"{os.path.join(zoo_dir, 'manifest.json')} lists no adapters")
    model_name = model or manifest.get("model") or DEFAULT_MODEL
    probe_tasks = tuple(probe_tasks or default_probe_tasks(data_dir))
    base_model = load_base_model(model_name)
    probes = build_probes(base_model, num_probes, max_probe_length, seed, probe_tasks, data_dir)
    cache_dir = cache_dir or os.path.join(zoo_dir, "deltas")
    cache = DeltaCache(cache_dir)
    deltas = cache.get_many(base_model, probes, [os.path.join(zoo_dir, e["path"]) for e in entries],
                            batch_size=batch_size, show_progress=show_progress)
    summary = task_summary(deltas, [e["task"] for e in entries])
    out_dir = out_dir or zoo_dir
    result = {
        "zoo_dir": zoo_dir, "model": model_name, "num_adapters": len(entries), "adapters": [e["path"] for e in entries],
        "probes": {"num": len(probes), "max_length": max_probe_length, "seed": seed, "tasks": list(probe_tasks),
                   "hash": probes.hash},
        "cache_dir": cache_dir, "computed": cache.computed, "cached": cache.hits, **summary,
        "seconds": time.perf_counter() - t0,
    }
    print(f"{len(entries)} adapters on {model_name}, {len(probes)} probes ({cache.computed} deltas computed, "
          f"{cache.hits} from the cache) in {result['seconds']:.1f} s")
    print(format_summary(summary))
    result["plot"] = plot_matrix(summary, os.path.join(out_dir, "deltas_matrix.png"))
    result["json"] = os.path.join(out_dir, "deltas.json")
    write_json_atomic(result["json"], result)
    print(f"saved {result['plot']} and {result['json']}")
    return result
