"""`RealAdapterDataset`: (condition, teacher) pairs read from a teacher zoo, and the splits that keep what
evaluation uses out of training.

- A *teacher* is one exported adapter of the zoo (`llgbm_jax.teachers.build_zoo`), read as a `LoRA`
  with its own scaling; adapters of different ranks or alphas are stacked by folding each one's scaling
  into B (`llgbm_jax.lora.fold_scaling`).
- A *condition* is ``num_prompts_per_adapter`` prompts drawn from the adapter's own training prompts
  (``prompts.json`` beside it), as cached sentence embeddings ``[P, 384]`` (frozen text encoder) or as
  the encoder's token ids and mask ``[P, S]`` (trained jointly).
- `make_splits` holds out, per task, a fraction of the prompts (chosen by a hash of the text, so the
  choice does not depend on which adapters exist) and some adapters: whole runs when a task has
  several, else one checkpoint of the trajectory. Training never conditions on a held-out prompt and
  never sees a held-out adapter. It also lists leave-one-task-out splits for unseen-task experiments.
- `BatchIterator` reshuffles adapters and redraws condition prompts every epoch from a seed; its
  ``(epoch, position)`` is part of the training state, so a resumed run sees the same batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence

import jax
import numpy as np

from llgbm_jax.generator.config import CHECKPOINTS
from llgbm_jax.lora.adapter import LoRA
from llgbm_jax.lora.ops import fold_scaling
from llgbm_jax.teachers.manifest import ZooAdapter, final_adapters, read_zoo
from llgbm_jax.utils.io import read_json, write_json_atomic

SPLIT_VERSION = 1


# --- splits -------------------------------------------------------------------------------------------

def is_heldout_prompt(text: str, fraction: float, seed: int) -> bool:
    """Whether a condition prompt is reserved for evaluation: a hash of (seed, text), so the same prompt
    is held out wherever it appears."""
    h = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64 < fraction


@dataclasses.dataclass
class Splits:
    """Which adapters and condition prompts training may use; written to the run folder as JSON."""

    train_adapters: list[str]
    heldout_adapters: list[str]
    heldout_adapter_rule: dict[str, str]  # per task, in words
    heldout_prompts: dict[str, list[str]]  # per task
    train_prompt_counts: dict[str, int]  # per task: distinct prompts training may condition on
    leave_one_task_out: dict[str, dict[str, list[str]]]  # task -> {"train": [...], "test": [...]}
    heldout_prompt_fraction: float
    seed: int
    version: int = SPLIT_VERSION

    def is_heldout_prompt(self, text: str) -> bool:
        return is_heldout_prompt(text, self.heldout_prompt_fraction, self.seed)

    def save(self, path: str) -> str:
        write_json_atomic(path, dataclasses.asdict(self))
        return path

    @classmethod
    def load(cls, path: str) -> "Splits":
        d = read_json(path)
        if d.get("version") != SPLIT_VERSION:
            raise ValueError(f"{path}: split file version {d.get('version')} is not {SPLIT_VERSION}")
        return cls(**d)


def make_splits(adapters: Sequence[ZooAdapter], heldout_prompt_fraction: float = 0.25, seed: int = 0) -> Splits:
    """Hold out, per task, the last run when it has several, else the middle checkpoint of its one
    trajectory (the final teacher stays in training), and ``heldout_prompt_fraction`` of its prompts."""
    by_task: dict[str, list[ZooAdapter]] = {}
    for a in adapters:
        by_task.setdefault(a.task, []).append(a)
    heldout, rules, heldout_prompts, counts = [], {}, {}, {}
    for task, items in sorted(by_task.items()):
        runs = sorted({a.run for a in items})
        if len(runs) > 1:
            held = [a for a in items if a.run == runs[-1]]
            rules[task] = f"whole run {runs[-1]} ({len(held)} checkpoints) of {len(runs)} runs"
        else:
            steps = sorted(a.step for a in items)
            if len(steps) < 2:
                held = []
                rules[task] = "nothing held out: the task has a single adapter"
            else:
                step = steps[(len(steps) - 1) // 2]
                held = [a for a in items if a.step == step]
                rules[task] = (f"checkpoint step {step} of the task's only run (trajectory steps {steps}); held-out "
                               f"checkpoints of one trajectory are near copies of their neighbours")
        heldout += [a.name for a in held]
        texts = sorted({p for a in items for p in a.prompts})
        heldout_prompts[task] = [p for p in texts if is_heldout_prompt(p, heldout_prompt_fraction, seed)]
        counts[task] = len(texts) - len(heldout_prompts[task])
    names = sorted(a.name for a in adapters)
    held_set = set(heldout)
    loto = {task: {"train": [n for n in names if not n.startswith(task + "/")],
                   "test": sorted(a.name for a in items)} for task, items in sorted(by_task.items())}
    return Splits(train_adapters=[n for n in names if n not in held_set], heldout_adapters=sorted(heldout),
                  heldout_adapter_rule=rules, heldout_prompts=heldout_prompts, train_prompt_counts=counts,
                  leave_one_task_out=loto, heldout_prompt_fraction=heldout_prompt_fraction, seed=seed)


def split_adapters(adapters: Sequence[ZooAdapter], splits: Splits, split: str, checkpoints: str = "all",
                   tasks: Sequence[str] | None = None) -> list[ZooAdapter]:
    """The adapters of ``split`` (``"train"`` or ``"eval"``), of ``tasks`` if given; ``checkpoints="final"`` keeps
    only each training run's last adapter (the held-out split is unchanged)."""
    wanted = set(splits.train_adapters if split == "train" else splits.heldout_adapters)
    out = [a for a in adapters if a.name in wanted and (tasks is None or a.task in tasks)]
    if checkpoints == "final" and split == "train":
        last = {a.name for a in final_adapters(out)}
        out = [a for a in out if a.name in last]
    return out


# --- teachers -------------------------------------------------------------------------------------------

def load_teachers(adapters: Sequence[ZooAdapter], model_config) -> LoRA:
    """All adapters as one stacked `LoRA` with numpy leaves (leading adapter axis). Adapters whose
    configs differ are folded to scaling 1 and the largest rank (`fold_scaling`)."""
    from llgbm_jax.lora.peft import load_peft_adapter

    loras = [load_peft_adapter(a.path, model_config) for a in adapters]
    if len({l.config for l in loras}) > 1:
        rank = max(l.config.max_rank for l in loras)
        modules = {l.modules for l in loras}
        if len(modules) > 1:
            raise ValueError(f"teachers target different modules {sorted(modules)}; a batch needs the same modules")
        loras = [fold_scaling(l, rank) for l in loras]
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x, np.float32) for x in xs]), *loras)


def take(lora: LoRA, idx) -> LoRA:
    """Rows ``idx`` of a stacked adapter batch."""
    return jax.tree_util.tree_map(lambda x: x[np.asarray(idx)], lora)


# --- the dataset --------------------------------------------------------------------------------------

CONDITIONS = ("embeddings", "tokens")


class RealAdapterDataset:
    """(condition, teacher) pairs of one split of a teacher zoo.

    ``split="train"``: the training adapters, conditioned on prompts that are not held out.
    ``split="eval"``: the held-out adapters, conditioned on their task's held-out prompts only.
    ``tasks`` restricts to some tasks (e.g. leave-one-task-out). ``checkpoints="final"`` trains on the last
    adapter of each teacher run only (the teacher the evaluation compares with) instead of every checkpoint of
    its trajectory (``"all"``): their conditions are drawn alike, so the loss's minimiser for a task is the
    mean of its checkpoints, shorter than the final teacher. ``condition="embeddings"`` needs
    ``embed(texts) -> [N, D]`` (e.g. a `llgbm_jax.conditions.text_encoder.EmbeddingCache`'s ``get``);
    ``"tokens"`` needs ``text_encoder`` (its ``tokenize``). ``teacher_deltas`` maps adapter names to
    their cached behavioural deltas (optional). ``descriptions`` (task -> one-line descriptions) with
    ``description_share`` > 0: that share of a training adapter's conditions is one description of its task
    alone (repeated to the condition's size) instead of example prompts.
    """

    def __init__(self, zoo_dir: str, model_config, *, split: str = "train", splits: Splits | None = None,
                 num_prompts_per_adapter: int = 8, seed: int = 0, condition: str = "embeddings", embed=None,
                 text_encoder=None, teacher_deltas: dict[str, np.ndarray] | None = None,
                 tasks: Sequence[str] | None = None, heldout_prompt_fraction: float = 0.25,
                 checkpoints: str = "all", descriptions: dict[str, Sequence[str]] | None = None,
                 description_share: float = 0.0):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        if checkpoints not in CHECKPOINTS:
            raise ValueError(f"checkpoints must be one of {CHECKPOINTS}, got {checkpoints!r}")
        if condition == "embeddings" and embed is None:
            raise ValueError("condition='embeddings' needs embed(texts) -> [N, D] (e.g. EmbeddingCache.get)")
        if condition == "tokens" and text_encoder is None:
            raise ValueError("condition='tokens' needs the text_encoder (for its tokenizer)")
        everything = read_zoo(zoo_dir)
        self.zoo_dir, self.split, self.condition = zoo_dir, split, condition
        self.splits = splits or make_splits(everything, heldout_prompt_fraction, seed)
        self.adapters = split_adapters(everything, self.splits, split, checkpoints, tasks)
        if not self.adapters:
            raise ValueError(f"{zoo_dir}: no {split} adapters" + (f" for tasks {list(tasks)}" if tasks else ""))
        self.num_prompts, self.seed = num_prompts_per_adapter, seed

        # Condition prompt pools: indices into one table of distinct texts.
        texts: dict[str, int] = {}
        self.pools = []
        for a in self.adapters:
            if split == "train":
                pool = [p for p in a.prompts if not self.splits.is_heldout_prompt(p)]
            else:
                pool = list(self.splits.heldout_prompts.get(a.task, []))
            if not pool:
                raise ValueError(f"adapter {a.name}: no {split} condition prompts (all {len(a.prompts)} are "
                                 f"{'held out' if split == 'train' else 'used for training'})")
            self.pools.append(np.asarray([texts.setdefault(p, len(texts)) for p in pool]))
        self.description_share = description_share if split == "train" else 0.0
        self.description_pools = []
        if self.description_share > 0:
            missing = sorted({a.task for a in self.adapters} - set(descriptions or {}))
            if missing:
                raise ValueError(f"description_share={description_share}: no descriptions for tasks {missing}")
            self.description_pools = [np.asarray([texts.setdefault(d, len(texts)) for d in descriptions[a.task]])
                                      for a in self.adapters]
        self.texts = list(texts)
        if condition == "embeddings":
            self.embeddings = np.asarray(embed(self.texts), np.float32)
            if self.embeddings.shape[0] != len(self.texts):
                raise ValueError(f"embed returned {self.embeddings.shape[0]} rows for {len(self.texts)} texts")
        else:
            self.token_ids, self.token_mask = text_encoder.tokenize(self.texts)
            self.token_lengths = self.token_mask.sum(-1)

        self.teachers = load_teachers(self.adapters, model_config)
        self.teacher_deltas = None
        if teacher_deltas is not None:
            missing = [a.name for a in self.adapters if a.name not in teacher_deltas]
            if missing:
                raise ValueError(f"teacher_deltas has no entry for {missing[:3]} ({len(missing)} adapters)")
            self.teacher_deltas = np.stack([np.asarray(teacher_deltas[a.name], np.float32) for a in self.adapters])

    def __len__(self) -> int:
        return len(self.adapters)

    def condition_indices(self, i: int, epoch: int = 0) -> np.ndarray:
        """Table indices of the prompts that condition adapter ``i`` in ``epoch`` (redrawn every epoch)."""
        pool = self.pools[i]
        rng = np.random.default_rng([self.seed, epoch, i])
        if self.description_share > 0 and rng.random() < self.description_share:
            return np.full(self.num_prompts, rng.choice(self.description_pools[i]))
        return rng.choice(pool, self.num_prompts, replace=len(pool) < self.num_prompts)

    def sample(self, i: int, epoch: int = 0, teacher: bool = True) -> dict[str, Any]:
        """Adapter ``i`` with the condition of ``epoch``; ``teacher=False`` leaves out its factors (a training
        step gathers them by ``index`` from the teachers it holds on the device)."""
        idx = self.condition_indices(i, epoch)
        a = self.adapters[i]
        out: dict[str, Any] = {"adapter": a.name, "task": a.task, "index": i, "prompts": [self.texts[j] for j in idx]}
        if teacher:
            out["teacher"] = take(self.teachers, i)
        if self.condition == "embeddings":
            out["condition"] = self.embeddings[idx]
        else:
            width = _bucket(int(self.token_lengths[idx].max()))
            out["condition_ids"], out["condition_mask"] = self.token_ids[idx, :width], self.token_mask[idx, :width]
        if self.teacher_deltas is not None:
            out["teacher_delta"] = self.teacher_deltas[i]
        return out

    __getitem__ = sample

    def collate_fn(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Stack samples with the adapter axis leading (token conditions padded to a common bucket)."""
        batch: dict[str, Any] = {k: [s[k] for s in samples] for k in ("adapter", "task", "prompts")}
        batch["index"] = np.asarray([s["index"] for s in samples])
        if all("teacher" in s for s in samples):
            batch["teacher"] = take(self.teachers, batch["index"])
        if self.condition == "embeddings":
            batch["condition"] = np.stack([s["condition"] for s in samples])
        else:
            width = max(s["condition_ids"].shape[1] for s in samples)
            pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))
            batch["condition_ids"] = np.stack([pad(s["condition_ids"]) for s in samples])
            batch["condition_mask"] = np.stack([pad(s["condition_mask"]) for s in samples])
        if self.teacher_deltas is not None:
            batch["teacher_delta"] = np.stack([s["teacher_delta"] for s in samples])
        return batch

    def batches(self, batch_size: int, state: dict | None = None, teachers: bool = True) -> "BatchIterator":
        return BatchIterator(self, batch_size, teachers=teachers, **(state or {}))


def _bucket(n: int) -> int:
    """Token widths in few shapes: powers of two from 16."""
    width = 16
    while width < n:
        width *= 2
    return width


@dataclasses.dataclass
class BatchIterator:
    """Endless seeded batches: each epoch a new permutation of the adapters (the remainder that does not
    fill a batch is dropped) and new condition prompts. ``state()`` / ``BatchIterator(ds, bs, **state)``
    resume exactly."""

    dataset: RealAdapterDataset
    batch_size: int
    epoch: int = 0
    position: int = 0  # next batch within the epoch
    teachers: bool = True  # include the teachers' factors (False: only their ``index``)

    def __post_init__(self):
        if not 0 < self.batch_size <= len(self.dataset):
            raise ValueError(f"batch_size {self.batch_size} must be in [1, {len(self.dataset)}] "
                             "(the dataset's adapters)")

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.dataset.seed, epoch, 1]).permutation(len(self.dataset))

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        order = self.order(self.epoch)
        idx = order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
        batch = self.dataset.collate_fn([self.dataset.sample(int(i), self.epoch, self.teachers) for i in idx])
        batch["epoch"] = self.epoch
        self.position += 1
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch
