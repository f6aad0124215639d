"""Tasks: where the data lives, the train/eval splits and the registry of task names.

Every data file is a JSON list of ``{"prompt", "response", "system"?}`` records; the answer formats of the
four task types are in `llgbm_jax.tasks.formats`. ``arc_e_cloze`` / ``obqa_cloze`` read the multiple-choice
files in cloze form: a 135M model knows many answers it cannot bind to a letter (docs/teachers.md).

The data directory is an argument or the environment variable ``LLGBM_DATA_DIR`` (default ``./data``,
which ``experiments/prepare_data.py`` writes where a network exists). With no data folder only the
generated task family (`llgbm_jax.tasks.family`) is available: `data_available` tells.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Sequence

from llgbm_jax.tasks.formats import (TASK_TYPES, Record, answer_options, check_task_type, gold_answer, infer_task_type,
                                      is_correct, mcq_to_cloze, normalise, parse_answer, question_text)

SPLITS = ("train", "eval")
DATA_ENV = "LLGBM_DATA_DIR"


def get_data_dir(path: str | None = None) -> str:
    """The task data folder: ``path`` if given, else ``$LLGBM_DATA_DIR``, else ``./data``."""
    return os.path.expanduser(path or os.environ.get(DATA_ENV) or "data")


def load_records(path: str) -> list[Record]:
    """Read and validate one data file (a JSON list of prompt/response records)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"task data file {path} is missing: set {DATA_ENV} or pass data_dir= to the folder that holds it, "
            f"or build the files with experiments/prepare_data.py")
    with open(path) as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
            raise ValueError(f"{path}: record {i} needs string fields 'prompt' and 'response', got {r!r:.200}")
    return records


# --- tasks --------------------------------------------------------------------------------------------

# The leakage rule (docs/tasks.md): a training record is an evaluation question when its question text,
# normalised for case, whitespace and punctuation, equals an evaluation question's, whatever its
# options. Teacher runs record this name; a zoo trained under another rule is stale.
LEAKAGE_RULE = "question-text-v2"


def question_key(record: Record) -> str:
    """The leakage rule's key: `question_text` of the prompt, `normalise`d (options and the
    instruction lines that differ between files play no part)."""
    return normalise(question_text(record["prompt"]))


@dataclasses.dataclass(frozen=True)
class Task:
    """A task: its type, data files and splits.

    ``train_file``/``eval_file`` are file names inside the data directory. A task with one file (GSM8K)
    gives ``eval_file=None`` and index ranges ``train_range``/``eval_range`` into that file. Training
    records whose question also appears in the evaluation split (`LEAKAGE_RULE`) are dropped, so
    evaluation questions are never trained on.
    """

    name: str
    task_type: str
    train_file: str | None = None
    eval_file: str | None = None
    train_range: tuple[int, int] | None = None
    eval_range: tuple[int, int] | None = None
    default_system: str | None = None  # for records without a "system" field (None: the template's own)

    def __post_init__(self):
        check_task_type(self.task_type)
        one_file = self.eval_file is None and self.train_file is not None
        if one_file and (self.train_range is None or self.eval_range is None):
            raise ValueError(f"task {self.name!r}: one data file needs both train_range and eval_range")
        if one_file:
            (a, b), (c, d) = self.train_range, self.eval_range
            if max(a, c) < min(b, d):
                raise ValueError(f"task {self.name!r}: train range {self.train_range} overlaps "
                                 f"eval range {self.eval_range}")
        if self.eval_file is not None and self.eval_file == self.train_file:
            raise ValueError(f"task {self.name!r}: train and eval files are the same ({self.train_file})")

    def split_file(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self.train_file is None:
            raise ValueError(f"task {self.name!r} has no data files (a generic {self.task_type!r} task)")
        return self.eval_file if (split == "eval" and self.eval_file) else self.train_file

    def has_data(self, data_dir: str | None = None) -> bool:
        """Whether the task's data files are in the data folder (generated tasks always have data)."""
        files = {self.train_file, self.eval_file} - {None}
        return bool(files) and all(os.path.isfile(os.path.join(get_data_dir(data_dir), f)) for f in files)

    def load(self, split: str, data_dir: str | None = None) -> list[Record]:
        """The records of ``split`` (``"train"`` or ``"eval"``), read from the data directory; a cloze
        task reads ``mcq`` files in cloze form (`mcq_to_cloze`)."""
        records = self._read(split, data_dir)
        if split == "train":
            held_out = {question_key(r) for r in self._read("eval", data_dir)}
            records = [r for r in records if question_key(r) not in held_out]
        if self.task_type == "cloze":
            records = [r if "options" in r else mcq_to_cloze(r) for r in records]
        return records

    def _read(self, split: str, data_dir: str | None) -> list[Record]:
        path = os.path.join(get_data_dir(data_dir), self.split_file(split))
        records = load_records(path)
        rng = self.train_range if split == "train" else self.eval_range
        if rng is not None:
            if rng[1] > len(records):
                raise ValueError(f"{path} has {len(records)} records; task {self.name!r} needs {split} range {rng}")
            records = records[rng[0]:rng[1]]
        return records

    # Per-record behaviour
    def format_prompt(self, record: Record, base_model) -> str:
        """The chat-template prompt (system message included), ending where the assistant answers."""
        return base_model.chat_prompt(record["prompt"], record.get("system") or self.default_system)

    def options(self, record: Record) -> tuple[str, ...]:
        return answer_options(record, self.task_type)

    def answer(self, record: Record):
        return gold_answer(record, self.task_type)

    def parse(self, text: str, record: Record):
        return parse_answer(text, record, self.task_type)

    def is_correct(self, pred, record: Record) -> bool:
        return is_correct(pred, record, self.task_type)

    def majority_baseline(self, records: Sequence[Record]) -> tuple[Any, float]:
        """The most frequent gold answer in ``records`` and the accuracy of always answering it."""
        counts = collections.Counter(self.answer(r) for r in records)
        label, n = counts.most_common(1)[0]
        return label, n / len(records)


TASKS: dict[str, Task] = {}


def register_task(task: Task, overwrite: bool = False) -> Task:
    if task.name in TASKS and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


register_task(Task("arc_e", "mcq", "ARC-e_train.json", "ARC-e_test.json"))
register_task(Task("boolq", "bool", "BoolQ_train.json", "BoolQ_test.json"))
register_task(Task("obqa", "mcq", "OBQA_train.json", "OBQA_test.json"))
register_task(Task("arc_e_cloze", "cloze", "ARC-e_train.json", "ARC-e_test.json"))
register_task(Task("obqa_cloze", "cloze", "OBQA_train.json", "OBQA_test.json"))
register_task(Task("gsm8k", "gsm8k", "GSM8K.json", None, train_range=(0, 1000), eval_range=(1000, 1319)))


def task_from_files(name: str, train_file: str, eval_file: str | None = None, task_type: str | None = None,
                    data_dir: str | None = None, **kw) -> Task:
    """A task for any further file(s) in the shared format; the type is inferred when not given."""
    if task_type is None:
        task_type = infer_task_type(load_records(os.path.join(get_data_dir(data_dir), train_file)), train_file)
    return Task(name, task_type, train_file, eval_file, **kw)


def get_task(name: str, data_dir: str | None = None) -> Task:
    """A registered task, or ``<name>_train.json`` + ``<name>_test.json`` found in the data directory."""
    if name in TASKS:
        return TASKS[name]
    folder = get_data_dir(data_dir)
    train, test = f"{name}_train.json", f"{name}_test.json"
    if os.path.isfile(os.path.join(folder, train)) and os.path.isfile(os.path.join(folder, test)):
        return task_from_files(name, train, test, data_dir=folder)
    raise KeyError(f"unknown task {name!r}: registered tasks are {sorted(TASKS)}, and {folder} has no "
                   f"{train} + {test} pair")


def resolve_task(task) -> Task:
    """A `Task` from a `Task`, a registered task name, or a bare task type (``"mcq"``, ``"bool"``, ``"gsm8k"``)."""
    if isinstance(task, Task):
        return task
    if task in TASKS:
        return TASKS[task]
    if task in TASK_TYPES:
        return Task(task, task)
    raise ValueError(f"{task!r} is neither a task type {TASK_TYPES} nor a registered task {sorted(TASKS)}")


def leakage_report(data_dir: str | None = None, names: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """Per task read from files (default: every registered one): its training records before the
    leakage rule, the number the rule removes (their question is an evaluation question) and the
    number kept."""
    out = {}
    for name in names if names is not None else sorted(TASKS):
        task = get_task(name, data_dir)
        if task.train_file is None:  # generated in memory: disjoint by construction
            continue
        raw, kept = len(task._read("train", data_dir)), len(task.load("train", data_dir))
        out[name] = {"train_records": raw, "removed": raw - kept, "kept": kept}
    return out
