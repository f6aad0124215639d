"""Tasks: where the data lives, the train/eval splits, prompt formatting, answer options and parsing.

Every data file is a JSON list of ``{"prompt", "response", "system"?}`` records (see the data README).
Four task types:

- ``mcq``: the response is ``[label]``; the options are the labels written in the prompt on lines
  ``"A: ..."`` (A–E and 1–4 both occur), each scored as the answer string ``"[A]"``.
- ``cloze``: the same questions without the option lines; the response is the gold answer's text and
  the options (a record field ``"options"``) are scored as texts. `Task.load` converts ``mcq`` files.
  A 135M model knows many answers it cannot bind to a letter: its letter-format teachers learn only
  the label prior, its cloze teachers gain real accuracy (README, "Teacher zoo").
- ``bool``: the response is ``[True]`` or ``[False]``.
- ``gsm8k``: the response is a worked solution ending in ``#### <number>``.

The data directory is an argument or the environment variable ``LLGBM_DATA_DIR`` (default ``./data``,
which ``experiments/prepare_data.py`` writes).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import re
from typing import Any, Sequence

TASK_TYPES = ("mcq", "cloze", "bool", "gsm8k")
SPLITS = ("train", "eval")
BOOL_OPTIONS = ("[True]", "[False]")
DATA_ENV = "LLGBM_DATA_DIR"

Record = dict[str, Any]


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


# --- answers: options, gold labels, parsing ---------------------------------------------------------

_OPTION_LINE = re.compile(r"^\s*([A-Z]|[1-9])\s*:\s(.*)$", re.M)
_INSTRUCTION_LINE = re.compile(r"^\s*please answer the question", re.I)


def mcq_choices(prompt: str) -> tuple[tuple[str, str], ...]:
    """The ``(label, text)`` option lines written in a prompt, in order (``"A: ..."``, ``"1: ..."``)."""
    return tuple((m.group(1), m.group(2).strip()) for m in _OPTION_LINE.finditer(prompt))


def mcq_labels(prompt: str) -> tuple[str, ...]:
    """The option labels written in a prompt, in order."""
    return tuple(label for label, _ in mcq_choices(prompt))


def question_text(prompt: str) -> str:
    """A prompt without its option lines and the answer-format instruction lines."""
    return "\n".join(line for line in prompt.split("\n")
                     if not _OPTION_LINE.match(line) and not _INSTRUCTION_LINE.match(line)).strip()


def mcq_to_cloze(record: Record) -> Record:
    """A ``mcq`` record in ``cloze`` form: the question without its option and instruction lines, the
    gold option's text as the response, the option texts as ``"options"``; no system message (the
    letter-answer instruction no longer applies, so the chat template's own is used)."""
    choices = mcq_choices(record["prompt"])
    labels, texts = [label for label, _ in choices], [text for _, text in choices]
    gold = gold_answer(record, "mcq")[1:-1]
    return {"prompt": question_text(record["prompt"]), "response": texts[labels.index(gold)], "options": texts}


def _bracketed(response: str) -> str:
    m = re.fullmatch(r"\s*\[([^\]]+)\]\s*", response)
    if not m:
        raise ValueError(f"expected a response of the form '[label]', got {response!r:.80}")
    return m.group(1).strip()


def answer_options(record: Record, task_type: str) -> tuple[str, ...]:
    """The answer strings scored for this record: ``("[A]", "[B]", ...)``, ``("[True]", "[False]")``, or
    the option texts of a cloze record."""
    if task_type == "bool":
        return BOOL_OPTIONS
    if task_type == "cloze":
        options = record.get("options")
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o for o in options):
            raise ValueError(f"cloze record needs 'options', a list of at least two answer texts, got "
                             f"{options!r:.200} for prompt {record['prompt']!r:.100}")
        return tuple(options)
    if task_type == "mcq":
        labels = mcq_labels(record["prompt"])
        if len(labels) < 2:
            raise ValueError(f"multiple-choice prompt has fewer than two option lines 'X: ...': "
                             f"{record['prompt']!r:.200}")
        return tuple(f"[{label}]" for label in labels)
    raise ValueError(f"task type {task_type!r} has no answer options (only 'mcq' and 'bool')")


def gold_answer(record: Record, task_type: str):
    """The reference answer: the option string (``"[B]"``, ``"[True]"``, a cloze answer text) or, for
    gsm8k, a float."""
    if task_type == "gsm8k":
        value = extract_gsm8k_answer(record["response"])
        if value is None:
            raise ValueError(f"gsm8k response has no final number: {record['response']!r:.200}")
        return value
    check_task_type(task_type)
    if task_type == "cloze":
        if record["response"] not in answer_options(record, task_type):
            raise ValueError(f"cloze response {record['response']!r:.80} is not among the record's options "
                             f"{record['options']!r:.200}")
        return record["response"]
    label = _bracketed(record["response"])
    if task_type == "bool":
        gold = extract_bool_answer(record["response"])
        if gold is None:
            raise ValueError(f"bool response must be [True] or [False], got {record['response']!r}")
        return gold
    options = answer_options(record, task_type)
    if f"[{label}]" not in options:
        raise ValueError(f"gold label {label!r} is not among the prompt's options {options}: {record['prompt']!r:.200}")
    return f"[{label}]"


def extract_mcq_answer(text: str, labels: Sequence[str] = ("A", "B", "C", "D")) -> str | None:
    """Read a multiple-choice answer from generated text as ``"[label]"``; ``None`` if there is none.

    In order: the first bracketed label (``[B]``, ``[b]``, ``[3]``); ``answer is B`` / ``Answer: (B)``;
    a label alone at the very start (``"B"``, ``"B: ..."``, ``"(B)"``, ``"B."``). Outside brackets
    labels are case-sensitive, so the article "a" is never read as option A.
    """
    upper = {str(x).upper(): str(x) for x in labels}
    for m in re.finditer(r"\[\s*([A-Za-z]|\d+)\s*\]", text):
        if m.group(1).upper() in upper:
            return f"[{upper[m.group(1).upper()]}]"
    alt = "|".join(re.escape(x) for x in sorted(upper.values(), key=len, reverse=True))
    m = (re.search(rf"(?i:answer\s*(?:is|:))\s*(?:option\s*)?\(?({alt})(?![\w])", text)
         or re.match(rf"\s*\(?({alt})(?:\)|[:.](?!\d)|\s*$)", text))
    return f"[{m.group(1)}]" if m else None


def extract_bool_answer(text: str) -> str | None:
    """``"[True]"``/``"[False]"`` from generated text: a bracketed ``[true]``/``[False]``, else the first
    word true/false, else a leading yes/no; ``None`` otherwise."""
    m = (re.search(r"\[\s*(true|false)\s*\]", text, re.I) or re.search(r"\b(true|false)\b", text, re.I)
         or re.match(r"\s*(yes|no)\b", text, re.I))
    if not m:
        return None
    return "[True]" if m.group(1).lower() in ("true", "yes") else "[False]"


# A number: an optional sign (only where it cannot be a subtraction: no word character or bracket just
# before it), an optional "$", digits with proper thousands separators or plain digits, optional decimals.
# A trailing period ("42.") is not part of the number.
_NUMBER = re.compile(r"(?:(?<![\w)\]])(?P<sign>[-−]))?\$?\s?(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?")
_FINAL_MARK = re.compile(r"####\s*")
_ANSWER_MARK = re.compile(r"answer\s*(?:is|:)", re.I)


def _to_float(m: re.Match) -> float:
    value = float(m.group("int").replace(",", "") + (m.group("frac") or ""))
    return -value if m.group("sign") else value


def extract_gsm8k_answer(text: str) -> float | None:
    """The final number of a worked solution: the number right after the first ``####`` that has one,
    else the first number after the last ``answer is``/``answer:`` on its line, else the last number
    in the text; ``None`` when there is no number at all."""
    for mark in _FINAL_MARK.finditer(text):
        m = _NUMBER.match(text, mark.end())
        if m:
            return _to_float(m)
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        m = _NUMBER.search(text[marks[-1].end():].split("\n", 1)[0])
        if m:
            return _to_float(m)
    numbers = list(_NUMBER.finditer(text))
    return _to_float(numbers[-1]) if numbers else None


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def extract_cloze_answer(text: str, options: Sequence[str]) -> str | None:
    """The option a generated answer gives: the longest option the text starts with (case and
    punctuation ignored), else the one option the text contains; ``None`` otherwise."""
    said = _normalise(text)
    norm = {o: _normalise(o) for o in options}
    starts = [o for o, n in norm.items() if n and (said == n or said.startswith(n + " "))]
    if starts:
        return max(starts, key=lambda o: len(norm[o]))
    inside = [o for o, n in norm.items() if n and re.search(rf"\b{re.escape(n)}\b", said)]
    return inside[0] if len(inside) == 1 else None


def numbers_equal(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def parse_answer(text: str, record: Record, task_type: str):
    """Read the answer of ``task_type`` from generated ``text`` (``None`` = parse failure)."""
    if task_type == "gsm8k":
        return extract_gsm8k_answer(text)
    if task_type == "bool":
        return extract_bool_answer(text)
    if task_type == "mcq":
        return extract_mcq_answer(text, [o[1:-1] for o in answer_options(record, task_type)])
    if task_type == "cloze":
        return extract_cloze_answer(text, answer_options(record, task_type))
    check_task_type(task_type)


def is_correct(pred, record: Record, task_type: str) -> bool:
    gold = gold_answer(record, task_type)
    return numbers_equal(pred, gold) if task_type == "gsm8k" else pred == gold


def check_task_type(task_type: str) -> str:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; known: {TASK_TYPES}")
    return task_type


def infer_task_type(records: Sequence[Record], name: str = "") -> str:
    """Guess the task type of a data file from its responses."""
    responses = [r["response"] for r in records]
    if responses and all(isinstance(r.get("options"), list) for r in records):
        return "cloze"
    if responses and all(r.strip() in BOOL_OPTIONS for r in responses):
        return "bool"
    if responses and all(re.fullmatch(r"\s*\[[^\]]+\]\s*", r) for r in responses) and all(
            mcq_labels(r["prompt"]) for r in records):
        return "mcq"
    if responses and all(re.search(r"####\s*\S", r) for r in responses):
        return "gsm8k"
    raise ValueError(f"cannot infer the task type of {name or 'these records'}: responses are neither "
                     f"all [True]/[False], all [label] with option lines, all with 'options', nor all '#### <number>'")


# --- tasks --------------------------------------------------------------------------------------------

# The data README's rule: a training record is an evaluation question when its question text,
# normalised for case, whitespace and punctuation, equals an evaluation question's, whatever its
# options. Teacher runs record this name; a zoo trained under another rule is stale.
LEAKAGE_RULE = "question-text-v2"


def _content_key(record: Record) -> str:
    """The leakage rule's key: `question_text` of the prompt, `_normalise`d (options and the
    instruction lines that differ between files play no part)."""
    return _normalise(question_text(record["prompt"]))


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

    def load(self, split: str, data_dir: str | None = None) -> list[Record]:
        """The records of ``split`` (``"train"`` or ``"eval"``), read from the data directory; a cloze
        task reads ``mcq`` files in cloze form (`mcq_to_cloze`)."""
        records = self._read(split, data_dir)
        if split == "train":
            held_out = {_content_key(r) for r in self._read("eval", data_dir)}
            records = [r for r in records if _content_key(r) not in held_out]
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

from llgbm_jax import task_family  # noqa: E402,F401  (registers the generated fam_* tasks; needs the names above)


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
