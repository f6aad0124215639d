"""Adapters for tasks the generator never saw (``llgbm-jax unseen``, ``python experiments/unseen.py``).

On the generated family at scale (`llgbm_jax.tasks.family`, zoo preset ``family``): a generator is trained with
the ΔW loss on the teachers of the seen tasks of a `FamilySplit` only (their prompts, and with
``description_share`` their one-line descriptions, as conditions), once per seed. Each held-out task (unseen
parameter values inside and outside the seen range, whole unseen kinds) is then scored on its test questions, by
cloze and by exact match, for:

- ``base``; ``oracle``: the task's own teacher (trained only to compare with);
- ``generated``: the generator fed a few of the task's example prompts; ``generated_description``: fed one of its
  descriptions alone;
- ``mean_teachers``: the mean of the seen tasks' final teachers (one exact LoRA); ``nearest_teacher``: the seen
  teacher whose condition embedding (mean over its prompts) is closest to the held-out task's examples';
  ``multitask``: one LoRA trained on all seen tasks' data (by default with the total budget of their teachers);
- ``random_text``: the generator fed random word strings; ``other_heldout``: fed another held-out task's examples.

Every number is a paired comparison on the same questions (gain ± SE); groups pool their tasks' questions and the
seeds. The collapse check compares the spread of the generated ΔW across held-out tasks with the oracles' and
gives each generated ΔW's cosine to its oracle and to the mean of the training teachers; the seen check scores the
generator on a few seen tasks (held-out prompts) beside their teachers; the teachers' ΔW cosines (neighbouring
tasks, one kind, different kinds) show how related tasks sit in weight space. Everything is resumable: the zoo, the
multi-task LoRA and the generators resume, scores are cached by adapter content. Writes ``split.json`` to
``run_dir``, ``results.json`` and ``unseen.png`` to ``run_dir`` (``run_dir/<mode>`` for generators supervised by
another mode than ΔW, ``UnseenConfig.mode``, and ``run_dir/<mode>_on_multitask`` for generators that write a
correction on top of the multi-task LoRA, ``UnseenConfig.on_multitask``: they share the split, the multi-task LoRA
and the score cache).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Any

import numpy as np

from llgbm_jax.ablations import UnseenConfig  # noqa: F401  (defined with AblationConfig, whose study it is)
from llgbm_jax.utils.io import content_key, read_json, write_json_atomic
from llgbm_jax.utils.lock import run_lock

FIXED = ("base", "oracle", "mean_teachers", "nearest_teacher", "multitask")  # the same for every seed
GENERATED = ("generated", "generated_description", "random_text", "other_heldout")  # one per seed
VARIANTS = FIXED + GENERATED
SCORES = ("cloze", "exact_match")


# --- set-up -------------------------------------------------------------------------------------------------

def evenly(items: list, k: int) -> list:
    """``k`` items spread evenly over ``items`` (all of them if ``k`` is at least their number)."""
    if k >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(k - 1, 1))] for i in range(k)]


def study_tasks(config: UnseenConfig) -> tuple[str, ...]:
    """The family tasks in the study: ``tasks``, else those of ``kinds``, else all."""
    from llgbm_jax.tasks.family import KINDS, family_task_names

    return config.tasks or tuple(n for k in (config.kinds or tuple(KINDS)) for n in family_task_names(k))


def zoo_config(config: UnseenConfig):
    """The zoo preset restricted to the study's tasks."""
    from llgbm_jax.teachers.zoo import PRESETS

    return dataclasses.replace(PRESETS[config.zoo_preset], model=config.model, tasks=study_tasks(config))


def training_config(config: UnseenConfig, seed: int, steps: int | None = None):
    """The generator's `TrainingConfig` for one seed (caches shared by the seeds); ``steps`` (default
    ``config.steps``) sets the schedule: warm-up for a tenth of it, at most 30 steps."""
    from llgbm_jax.generator.config import TrainingConfig

    run = os.path.join(config.generators_dir, f"seed{seed}")
    cache = os.path.join(config.run_dir, "cache")
    steps = steps or config.steps
    return TrainingConfig(base_model=config.model, num_steps=steps, warmup_steps=min(30, steps // 10),
                          learning_rate=config.learning_rate, num_prompts_per_adapter=config.num_prompts,
                          description_share=config.description_share, generator_hidden=config.generator_hidden,
                          num_probes=config.num_probes, max_probe_length=config.max_probe_length,
                          delta_batch_probes=min(TrainingConfig.delta_batch_probes, config.num_probes),
                          teacher_checkpoints="final", seed=seed, zoo_dir=config.zoo_dir, output_dir=run,
                          checkpoint_dir=os.path.join(run, "checkpoints"), checkpoint_every=100,
                          delta_cache_dir=os.path.join(cache, "deltas"),
                          embedding_cache_dir=os.path.join(cache, "embeddings"))


def example_prompts(task: str, n: int, seed: int) -> list[str]:
    """``n`` prompts of a task's training records (a held-out task's are never training conditions)."""
    from llgbm_jax.tasks.registry import get_task

    pool = get_task(task).load("train")
    rng = np.random.default_rng([seed, 777])
    return [pool[i]["prompt"] for i in rng.choice(len(pool), n, replace=False)]


def random_texts(n: int, seed: int, words: int = 8) -> list[str]:
    """``n`` strings of random vocabulary words: conditions that say nothing about any task."""
    from llgbm_jax.tasks.family import vocabulary_words

    vocab = vocabulary_words()
    rng = np.random.default_rng([seed, 4242])
    return [" ".join(vocab[i] for i in rng.choice(len(vocab), words, replace=False)) for _ in range(n)]


def train_multitask(config: UnseenConfig, zoo_cfg, seen, base_model, show_progress: bool):
    """One LoRA on all seen tasks' training records, interleaved, with the teachers' settings; by default as many
    steps as the seen teachers took together (the same total budget). Resumes; returns the final adapter."""
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.tasks.registry import get_task
    from llgbm_jax.teachers.run import train_run

    tcfg = zoo_cfg.teacher_for(seen[0])
    steps = config.multitask_steps or sum(zoo_cfg.teacher_for(t).steps for t in seen)
    tcfg = dataclasses.replace(tcfg, steps=steps, warmup_steps=min(max(tcfg.warmup_steps, steps // 20), steps - 1),
                               save_every=steps, adapters_per_run=1, checkpoint_every=50)
    per_task = -(-steps * tcfg.batch_size // len(seen))
    pools = [get_task(t).load("train")[:per_task] for t in seen]
    records = [pool[i] for i in range(per_task) for pool in pools if i < len(pool)]
    run_dir, final = os.path.join(config.run_dir, "multitask"), multitask_path(config, steps)
    if not os.path.isfile(os.path.join(final, "metrics.json")):
        train_run(base_model, get_task(seen[0]), records, tcfg, run_dir, seed=1234, show_progress=show_progress,
                  data_info={"tasks": list(seen), "records": len(records)})
    return load_peft_adapter(final, base_model.config), steps


def multitask_path(config: UnseenConfig, steps: int) -> str:
    """The multi-task LoRA's PEFT folder (`train_multitask`)."""
    return os.path.join(config.run_dir, "multitask", f"step_{steps:05d}")


def kind_table(zoo_dir: str, zoo_cfg) -> list[dict]:
    """Per kind of the family, over its tasks the zoo has scored: base and teacher cloze accuracy and the gain
    pooled over the tasks' questions (± paired SE), and how many teachers beat their base by 2 SE."""
    from llgbm_jax.scoring.stats import paired_gain
    from llgbm_jax.tasks.family import KINDS, family_task_names

    hits = lambda p: [d["correct"] for d in read_json(p)]
    rows = []
    for kind in KINDS:
        got = []
        for t in family_task_names(kind):
            base = os.path.join(zoo_dir, t, "base_test_details.json")
            final = os.path.join(zoo_dir, t, "run0", f"step_{zoo_cfg.teacher_for(t).steps:05d}", "test_details.json")
            if t in zoo_cfg.tasks and os.path.isfile(base) and os.path.isfile(final):
                got.append((hits(base), hits(final)))
        if got:
            pooled_gain = paired_gain([x for b, _ in got for x in b], [x for _, f in got for x in f])
            rows.append({**pooled_gain, "kind": kind, "tasks": len(got), "of": len(family_task_names(kind)),
                         "n_per_task": len(got[0][0]), "base": float(np.mean([np.mean(b) for b, _ in got])),
                         "teacher": float(np.mean([np.mean(f) for _, f in got])),
                         "significant": sum(paired_gain(b, f)["gain_in_se"] > 2 for b, f in got)})
    return rows


def format_kind_table(rows: list[dict]) -> str:
    lines = [f"{'kind':<11} {'tasks':>6} {'n/task':>6} {'base':>6} {'teacher':>7} {'gain ± SE':>16} {'> 2 SE':>7}"]
    lines += [f"{r['kind']:<11} {r['tasks']:>3}/{r['of']:<2} {r['n_per_task']:>6} {r['base']:>6.3f} "
              f"{r['teacher']:>7.3f} "
              f"{r['gain']:+.3f} ± {r['se']:.3f}".ljust(61) + f" {r['significant']:>3}/{r['tasks']}" for r in rows]
    return "\n".join(lines)


# --- ΔW geometry ---------------------------------------------------------------------------------------------

def delta_w_gram(loras) -> np.ndarray:
    """⟨ΔW_i, ΔW_j⟩ summed over every layer and module, from the factors (ΔW is never formed):
    ⟨sB A, s'B' A'⟩ = Σ (sB)ᵀ(s'B') ∘ A A'ᵀ."""
    n = len(loras)
    parts = [{m: (np.asarray(l.B[m], np.float64) * np.asarray(l.scales(m), np.float64)[:, None, :],
                  np.asarray(l.A[m], np.float64)) for m in l.A} for l in loras]
    gram = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            inner = lambda m, bi, ai: float((np.einsum("lor,los->lrs", bi, parts[j][m][0])
                                             * np.einsum("lri,lsi->lrs", ai, parts[j][m][1])).sum())
            gram[i, j] = gram[j, i] = sum(inner(m, bi, ai) for m, (bi, ai) in parts[i].items() if m in parts[j])
    return gram


def cosines(gram: np.ndarray) -> np.ndarray:
    """The cosine matrix of a Gram matrix."""
    norm = np.sqrt(np.maximum(np.diag(gram), 1e-60))
    return gram / np.outer(norm, norm)


def teacher_cosines(teachers: dict[str, Any]) -> dict[str, dict]:
    """Mean ΔW cosine between family teachers (name -> LoRA): neighbours (tasks next to each other in their kind's
    order among those given, such as add 3 and add 4), any two of one kind, and two of different kinds."""
    from llgbm_jax.tasks.family import family_task_names, kind_of

    names = list(teachers)
    cos, index = cosines(delta_w_gram([teachers[n] for n in names])), {n: i for i, n in enumerate(names)}
    pairs = {"neighbours": [], "same_kind": [], "other_kind": []}
    for i, j in itertools.combinations(range(len(names)), 2):
        pairs["same_kind" if kind_of(names[i]) == kind_of(names[j]) else "other_kind"].append(cos[i, j])
    for kind in sorted({kind_of(n) for n in names}):
        order = [n for n in family_task_names(kind) if n in index]
        pairs["neighbours"] += [cos[index[a], index[b]] for a, b in zip(order, order[1:])]
    return {k: {"mean": float(np.mean(v)), "n": len(v)} for k, v in pairs.items() if v}


def collapse_check(generated, oracles, mean_teachers) -> dict[str, Any]:
    """Spread of the generated ΔW across held-out tasks (mean squared distance to their mean over mean squared
    norm) against the oracles'; each generated ΔW's cosine to its task's oracle and to the mean of the training
    teachers, and the mean teacher's cosine to each oracle."""
    def spread(g):
        k = len(g)
        centred = np.trace(g) / k - g.sum() / k ** 2
        return float(centred / max(np.trace(g) / k, 1e-30))

    k = len(generated)
    g = delta_w_gram(list(generated) + list(oracles) + [mean_teachers])
    cos = cosines(g)
    to_mean, to_oracle, mean_to_oracle = cos[:k, 2 * k], np.diag(cos[:k, k:2 * k]), cos[k:2 * k, 2 * k]
    return {"generated_spread": spread(g[:k, :k]), "oracle_spread": spread(g[k:2 * k, k:2 * k]),
            "cosine_to_mean_teachers": to_mean.tolist(), "mean_cosine_to_mean_teachers": float(to_mean.mean()),
            "cosine_to_oracle": to_oracle.tolist(), "mean_cosine_to_oracle": float(to_oracle.mean()),
            "mean_teachers_cosine_to_oracle": float(mean_to_oracle.mean())}


# --- scoring -------------------------------------------------------------------------------------------------

def score(base_model, task: str, lora, n: int, exact_match: bool, cache) -> dict[str, list[bool]]:
    """Per-question hits of ``lora`` (a `LoRA`) on the first ``n`` test questions of ``task`` (cloze and exact
    match), cached by adapter content."""
    from llgbm_jax.base.model import model_hash
    from llgbm_jax.lora.ops import lora_hash
    from llgbm_jax.scoring.accuracy import compute_accuracy_with_lora, exact_match_accuracy, option_scoring_key
    from llgbm_jax.tasks.registry import get_task

    t = get_task(task)
    records = t.load("eval")[:n]
    key = {"model": model_hash(base_model), "task": task, "questions": content_key([r["prompt"] for r in records]),
           "adapter": lora_hash(lora), "exact_match": exact_match, **option_scoring_key(t, records)}
    got = cache.get(key)
    if got is None:
        got = {"cloze": [bool(d["correct"]) for d in compute_accuracy_with_lora(
            lora, base_model, records, t, return_details=True, show_progress=False)["details"]]}
        if exact_match:
            got["exact_match"] = [bool(d["correct"]) for d in exact_match_accuracy(
                lora, base_model, records, t, return_details=True, show_progress=False)["details"]]
        cache.put(key, got)
    return got


def pooled(diffs: list[np.ndarray]) -> dict[str, float]:
    """Mean and standard error of paired per-question differences pooled over tasks (each task's differences
    already averaged over seeds)."""
    from llgbm_jax.scoring.stats import mean_difference

    return mean_difference(np.concatenate(diffs))


def seed_mean(hits) -> np.ndarray:
    """Per-question hits as floats: one list as it is, hits per seed (a list of lists) averaged over the seeds."""
    h = np.asarray(hits, np.float64)
    return h.mean(axis=0) if h.ndim == 2 else h


def pooled_difference(new: dict, ref: dict, tasks=None) -> dict[str, float]:
    """`pooled` of ``new[t] - ref[t]`` over ``tasks`` (default: every task of ``new``), each side's hits first
    averaged over its seeds (`seed_mean`)."""
    return pooled([seed_mean(new[t]) - seed_mean(ref[t]) for t in (new if tasks is None else tasks)])


def summarize(hits: dict, split, scores=SCORES) -> dict[str, Any]:
    """Per held-out task and per group: accuracy of every variant, its gain over base, the generated adapter's
    difference to every baseline (paired, pooled) and the share of the oracle's gain it recovers."""
    from llgbm_jax.tasks.family_splits import GROUPS

    out: dict[str, Any] = {"tasks": {}, "groups": {}}
    mean_hits = {t: {v: {s: seed_mean(h[v][s]) for s in scores if s in h["base"]} for v in VARIANTS if v in h}
                 for t, h in hits.items()}
    for t, h in mean_hits.items():
        out["tasks"][t] = {"group": split.group(t), "n": len(h["base"]["cloze"]),
                           **{s: {v: float(h[v][s].mean()) for v in h} for s in h["base"]}}
    for g in GROUPS + ("all",):
        tasks = [t for t in mean_hits if g == "all" or split.group(t) == g]
        if not tasks:
            continue
        row: dict[str, Any] = {"tasks": tasks}
        for s in (s for s in scores if s in mean_hits[tasks[0]]["base"]):
            diff = lambda a, b: [mean_hits[t][a][s] - mean_hits[t][b][s] for t in tasks]
            r = {"gain_over_base": {v: pooled(diff(v, "base")) for v in VARIANTS if v != "base"},
                 "generated_minus": {v: pooled(diff("generated", v)) for v in VARIANTS
                                     if v not in ("base", "generated")}}
            seed_gains = lambda v: [pooled([np.asarray(hits[t][v][s], np.float64)[i] - mean_hits[t]["base"][s]
                                            for t in tasks])["gain"] for i in range(len(hits[tasks[0]][v][s]))]
            r["per_seed_gain"] = {v: seed_gains(v) for v in GENERATED if v in mean_hits[tasks[0]]}
            oracle = r["gain_over_base"]["oracle"]["gain"]
            r["recovered"] = r["gain_over_base"]["generated"]["gain"] / oracle if oracle > 0 else None
            row[s] = r
        out["groups"][g] = row
    return out


def summarize_seen(seen_hits: dict) -> dict[str, Any]:
    """Teacher's and generated adapter's (seed-averaged) cloze gain over base pooled over the checked seen tasks,
    and the share of the teachers' gain recovered."""
    if not seen_hits:
        return {}
    gain = lambda v: pooled_difference({t: h[v] for t, h in seen_hits.items()},
                                       {t: h["base"] for t, h in seen_hits.items()})
    teacher, generated = gain("teacher"), gain("generated")
    return {"tasks": list(seen_hits), "teacher": teacher, "generated": generated, "hits": seen_hits,
            "recovered": generated["gain"] / teacher["gain"] if teacher["gain"] > 0 else None}


def format_results(summary: dict) -> str:
    lines, scored = [], next(iter(summary["groups"].values()))  # every group has the same scores
    for s in (s for s in SCORES if s in scored):
        lines.append(f"\n{s}: gain over base, pooled over tasks and seeds (± paired SE; n questions)")
        head = f"{'group':<8} {'n':>5}  " + "  ".join(f"{v:>21}" for v in VARIANTS[1:]) + "  recovered"
        lines.append(head)
        for g, row in summary["groups"].items():
            r = row[s]
            cells = "  ".join(f"{r['gain_over_base'][v]['gain']:+.3f} ± {r['gain_over_base'][v]['se']:.3f}".rjust(21)
                              for v in VARIANTS[1:])
            rec = "-" if r["recovered"] is None else f"{100 * r['recovered']:.0f}%"
            lines.append(f"{g:<8} {r['gain_over_base']['oracle']['n']:>5}  {cells}  {rec}")
        lines.append(f"generated minus each baseline ({s}):")
        for g, row in summary["groups"].items():
            m = row[s]["generated_minus"]
            lines.append(f"  {g:<8} " + ", ".join(f"{v} {m[v]['gain']:+.3f} ± {m[v]['se']:.3f}" for v in m))
        lines.append(f"gain over base per seed, in the order of the seeds ({s}):")
        for g, row in summary["groups"].items():
            lines.append(f"  {g:<8} " + ", ".join(f"{v} " + " ".join(f"{x:+.3f}" for x in gains)
                                                  for v, gains in row[s]["per_seed_gain"].items()))
    return "\n".join(lines)


def plot(summary: dict, path: str) -> str:
    """Per held-out task: cloze accuracy of base, oracle, generated and the best baseline (PNG)."""
    from llgbm_jax.utils.figures import pyplot, save_figure

    plt = pyplot()

    tasks = list(summary["tasks"])
    acc = lambda v: np.asarray([summary["tasks"][t]["cloze"][v] for t in tasks])
    baselines = ("mean_teachers", "nearest_teacher", "multitask", "random_text", "other_heldout")
    best = np.max(np.stack([acc(v) for v in baselines]), axis=0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(tasks) + 2), 4.5))
    width, x = 0.2, np.arange(len(tasks))
    for j, (name, vals) in enumerate((("base", acc("base")), ("oracle", acc("oracle")),
                                      ("generated", acc("generated")), ("best baseline", best))):
        ax.bar(x + (j - 1.5) * width, vals, width, label=name)
    ax.set_xticks(x, tasks, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="cloze accuracy", ylim=(0, 1), title="held-out tasks: oracle, generated, best baseline")
    ax.legend(ncol=4, fontsize=8)
    return save_figure(fig, path)


# --- the study ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Study:
    """What every generator of the study is judged with (`prepare`): the split, the teachers and the fixed
    baselines, the score cache."""

    config: UnseenConfig
    base_model: Any
    split: Any  # FamilySplit
    oracle: dict  # held-out task -> its teacher (LoRA)
    seen_teachers: dict  # seen task -> its final teacher (LoRA)
    mean_teachers: Any
    multitask: Any
    multitask_steps: int
    zero: Any  # the base model as an all-zero adapter of the teachers' shape
    cache: Any  # ScoreCache
    seconds: dict

    @property
    def seen(self) -> list[str]:
        return list(self.split.seen)

    @property
    def heldout(self) -> list[str]:
        return list(self.split.heldout)

    def score(self, task: str, lora, n: int | None = None) -> dict[str, list[bool]]:
        return score(self.base_model, task, lora, n or self.config.eval_samples, self.config.exact_match, self.cache)

    def cloze(self, task: str, lora) -> list[bool]:
        return score(self.base_model, task, lora, self.config.eval_samples, False, self.cache)["cloze"]

    def fixed(self, task: str, nearest: str | None = None) -> dict[str, Any]:
        """The baselines that do not depend on a generator, for a held-out ``task``."""
        out = {"base": self.zero, "oracle": self.oracle[task], "mean_teachers": self.mean_teachers,
               "multitask": self.multitask}
        if nearest is not None:
            out["nearest_teacher"] = self.seen_teachers[nearest]
        return out


def prepare(config: UnseenConfig, *, base_model=None, show_progress: bool = True) -> Study:
    """Build (or reuse) the zoo, save the split, train (or reuse) the multi-task LoRA, load the teachers."""
    import jax

    from llgbm_jax.base import load_base_model
    from llgbm_jax.evaluation.comparison import ScoreCache
    from llgbm_jax.lora.ops import mean_lora
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.tasks.family_splits import family_split
    from llgbm_jax.teachers.manifest import final_adapters, read_zoo
    from llgbm_jax.teachers.zoo import build_zoo

    t0, seconds = time.perf_counter(), {}
    os.makedirs(config.run_dir, exist_ok=True)
    base_model = base_model or load_base_model(config.model)
    zoo_cfg = zoo_config(config)
    build_zoo(config.zoo_dir, zoo_cfg, base_model=base_model, show_progress=show_progress)
    seconds["zoo"] = time.perf_counter() - t0
    print("teachers per kind (cloze, test questions):\n" + format_kind_table(kind_table(config.zoo_dir, zoo_cfg)))
    split = family_split(config.held_out_kinds, config.inside_per_kind, config.outside_per_kind, zoo_cfg.tasks)
    write_json_atomic(os.path.join(config.run_dir, "split.json"), split.to_dict())
    print(f"{len(split.seen)} seen tasks, {len(split.heldout)} held out: inside {list(split.inside)}, outside "
          f"{list(split.outside)}, kinds {list(split.held_out_kinds)}", flush=True)
    t = time.perf_counter()
    multitask, multitask_steps = train_multitask(config, zoo_cfg, list(split.seen), base_model, show_progress)
    seconds["multitask"] = time.perf_counter() - t
    finals = {a.task: a for a in final_adapters(read_zoo(config.zoo_dir))}
    load = lambda t: load_peft_adapter(finals[t].path, base_model.config)
    seen_teachers = {s: load(s) for s in split.seen}
    zero = jax.tree_util.tree_map(np.zeros_like, next(iter(seen_teachers.values())))
    return Study(config, base_model, split, {h: load(h) for h in split.heldout}, seen_teachers,
                 mean_lora(list(seen_teachers.values())), multitask, multitask_steps, zero,
                 ScoreCache(os.path.join(config.run_dir, "cache", "scores")), seconds)


def train_generator(study: Study, seed: int, *, mode: str | None = None, steps: int | None = None,
                    run_dir: str | None = None, run_name: str | None = None, show_progress: bool = True,
                    teachers_transform=None):
    """Train (or resume) a generator on the seen tasks' teachers; ``mode`` is a supervision mode of
    `llgbm_jax.ablations.MODES` (default: the study's ``mode``). ``teachers_transform`` maps the training teachers (a
    stacked LoRA) before training (the gauge test). Writes to ``run_dir/run_name`` (default: the study's
    ``generators_dir/seed<k>``). Returns ``(generator, components, TrainingState)``."""
    from llgbm_jax.ablations import AblationConfig, mode_config, setup_base_components
    from llgbm_jax.generator.model import create_generator
    from llgbm_jax.generator.training import train

    cfg = training_config(study.config, seed, steps)
    run = os.path.join(run_dir or study.config.generators_dir, run_name or f"seed{seed}")
    cfg = cfg.replace(batch_size=min(cfg.batch_size, len(study.seen)), output_dir=run,
                      checkpoint_dir=os.path.join(run, "checkpoints"))
    cfg = mode_config(cfg, mode or study.config.mode)
    if study.config.on_multitask:
        cfg = cfg.replace(base_adapter=multitask_path(study.config, study.multitask_steps))
    comp = setup_base_components(AblationConfig(tasks=tuple(study.seen)), cfg, base_model=study.base_model,
                                 show_progress=show_progress)
    if teachers_transform is not None:
        comp.dataset.teachers = teachers_transform(comp.dataset.teachers)
    gen = create_generator(cfg, seed, model_config=study.base_model.config)
    with run_lock(run, advice="wait for it to finish"):  # the study and the ablation may share this generator
        state = train(gen, comp.dataset, cfg, model_config=study.base_model.config, show_progress=show_progress,
                      delta=comp.delta_inputs if cfg.lambda_delta > 0 or cfg.lambda_sft > 0 else None,
                      sft=comp.sft_data() if cfg.lambda_sft > 0 else None)
    return gen, comp, state


def heldout_adapters(study: Study, generator, text_encoder, seed: int, salt: int = 0) -> dict[str, dict]:
    """Per held-out task, the generator's adapters: from examples, from one description, from random text, and
    from another held-out task's examples."""
    from llgbm_jax.evaluation.comparison import cross_task_sources
    from llgbm_jax.generator.model import generate_lora
    from llgbm_jax.tasks.family import descriptions

    n = study.config.num_prompts
    generated = {h: generate_lora(generator, example_prompts(h, n, seed), text_encoder) for h in study.heldout}
    other = cross_task_sources(study.heldout)
    return {h: {"generated": generated[h],
                "generated_description": generate_lora(generator, [descriptions(h)[seed % len(descriptions(h))]],
                                                       text_encoder),
                "random_text": generate_lora(generator, random_texts(n, seed + 100 * salt), text_encoder),
                "other_heldout": generated[other[h]]} for h in study.heldout}


def seen_generated_hits(study: Study, generator, comp, tasks: list[str]) -> dict[str, list[bool]]:
    """Per seen task, the cloze hits of the generator's adapter from the task's held-out prompts (its fit on the
    tasks it was trained on)."""
    from llgbm_jax.generator.model import generate_lora

    prompts = lambda t: comp.dataset.splits.heldout_prompts[t][:study.config.num_prompts]
    return {t: study.cloze(t, generate_lora(generator, prompts(t), comp.text_encoder)) for t in tasks}


def nearest_teachers(study: Study, text_encoder) -> dict[str, str]:
    """Per held-out task, the seen task whose examples' mean embedding is closest (cosine) to its examples'."""
    n = study.config.num_prompts
    centre = lambda t: np.asarray(text_encoder.encode(example_prompts(t, n, 0)), np.float64).mean(0)
    seen = {s: centre(s) for s in study.seen}
    out = {}
    for h in study.heldout:
        c = centre(h)
        cos = {s: float(c @ v / (np.linalg.norm(c) * np.linalg.norm(v))) for s, v in seen.items()}
        out[h] = max(cos, key=cos.get)
    return out


def run(config: UnseenConfig = UnseenConfig(), *, base_model=None, show_progress: bool = True) -> dict[str, Any]:
    """The whole study (module docstring); returns what it writes to ``results.json``."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = config.generators_dir
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, "config.json"), config.to_dict())
    study = prepare(config, base_model=base_model, show_progress=show_progress)
    seconds = dict(study.seconds)
    cosines = teacher_cosines({**study.seen_teachers, **study.oracle})
    print("teachers' ΔW cosine (mean): " + ", ".join(f"{k} {v['mean']:.3f} (n {v['n']})" for k, v in cosines.items()),
          flush=True)
    hits: dict[str, dict] = {h: {v: {} for v in VARIANTS} for h in study.heldout}
    checks = evenly(study.seen, config.seen_tasks)
    seen_hits: dict[str, dict] = {t: {"generated": []} for t in checks}
    nearest, collapse, training = {}, {}, {}
    for k, seed in enumerate(config.seeds):
        t = time.perf_counter()
        gen, comp, state = train_generator(study, seed, show_progress=show_progress)
        training[seed] = {"loss_first": state.loss_history[0], "loss_last": state.loss_history[-1],
                          "seconds": state.seconds}
        seconds[f"generator_seed{seed}"] = time.perf_counter() - t
        adapters = heldout_adapters(study, gen, comp.text_encoder, seed, salt=k)
        if not nearest:
            nearest = nearest_teachers(study, comp.text_encoder)
        collapse[seed] = collapse_check([adapters[h]["generated"] for h in study.heldout],
                                        [study.oracle[h] for h in study.heldout], study.mean_teachers)
        t = time.perf_counter()
        for h in tqdm(study.heldout, desc=f"scoring seed {seed}", disable=not show_progress):
            if k == 0:
                for v, lora in study.fixed(h, nearest[h]).items():
                    hits[h][v] = study.score(h, lora)
            for v, lora in adapters[h].items():
                for s, x in study.score(h, lora).items():
                    hits[h][v].setdefault(s, []).append(x)
        for task, x in seen_generated_hits(study, gen, comp, checks).items():  # does it fit its training tasks?
            if k == 0:
                seen_hits[task].update(base=study.cloze(task, study.zero),
                                       teacher=study.cloze(task, study.seen_teachers[task]))
            seen_hits[task]["generated"].append(x)
        seconds[f"scoring_seed{seed}"] = time.perf_counter() - t

    summary = summarize(hits, study.split)
    seen = summarize_seen(seen_hits)
    results = {"config": config.to_dict(), "split": study.split.to_dict(), "multitask_steps": study.multitask_steps,
               "nearest_teacher": nearest, "teacher_cosines": cosines, "training": training, "collapse": collapse,
               "summary": summary, "seen": seen,
               "hits": hits, "seconds": {**seconds, "total": time.perf_counter() - t0}}
    write_json_atomic(os.path.join(out, "results.json"), results)
    print(format_results(summary))
    if seen:
        print(f"seen tasks ({len(checks)}, held-out prompts and questions, cloze, n {seen['teacher']['n']}): gain "
              f"over base: teacher {seen['teacher']['gain']:+.3f} ± {seen['teacher']['se']:.3f}, generated "
              f"{seen['generated']['gain']:+.3f} ± {seen['generated']['se']:.3f}"
              + ("" if seen["recovered"] is None else f", recovered {100 * seen['recovered']:.0f}%"))
    print("collapse check (ΔW spread across held-out tasks, generated vs oracle; mean cosine of the generated ΔW to "
          "the mean teacher and to the oracle; the mean teacher's to the oracle): " +
          "; ".join(f"seed {s}: {c['generated_spread']:.3f} vs {c['oracle_spread']:.3f}, "
                    f"{c['mean_cosine_to_mean_teachers']:.3f}, {c['mean_cosine_to_oracle']:.3f}; "
                    f"{c['mean_teachers_cosine_to_oracle']:.3f}" for s, c in collapse.items()))
    print("times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in results["seconds"].items()))
    print(f"plot: {plot(summary, os.path.join(out, 'unseen.png'))}; results: "
          f"{os.path.join(out, 'results.json')} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return results


def load_results(run_dir: str) -> dict[str, Any]:
    return read_json(os.path.join(run_dir, "results.json"))
