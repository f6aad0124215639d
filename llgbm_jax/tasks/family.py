"""A family of generated tasks that a 135M model's teachers learn: string and number transforms.

Every task applies one transform to an input given after its instruction (``"Reverse the order of
these words: w1 w2 w3 w4"`` → ``"w4 w3 w2 w1"``). Tasks are grouped in *kinds* that share their inputs:
a record's ``options`` are the outputs of every task of its kind on the same input (deduplicated), so
the tasks of one kind have the same options and only the instruction tells which is right. Records are
scored as ``cloze`` (option log-likelihood) and, as a second score, by greedy generation with exact
match (`llgbm_jax.evaluation.exact_match_accuracy`).

Records are generated in memory from a seed, no file or download: the words are whole lowercase
alphabetic tokens of the embedded SmolLM2 tokenizer (whatever the base model), the numbers integers.
Train and test inputs come from disjoint pools (a word or number is a test item when the CRC32 of its
text is 0 mod 4, the same for every seed), so no test input, and no test word, is ever trained on.

Task names: ``fam_<transform>`` or ``fam_<transform>_<k>`` for parametric kinds (``fam_add_7``,
``fam_rotate_2``, ``fam_word_3``); `family_task_names` lists them, `KINDS` describes the kinds so that
experiments can hold out a parameter value. All tasks are registered in `llgbm_jax.tasks.TASKS`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import zlib
from typing import Any, Callable

import numpy as np

from llgbm_jax.base.model import DEFAULT_MODEL
from llgbm_jax.tasks.formats import Record
from llgbm_jax.tasks.registry import SPLITS, Task, question_key, register_task

WORDS_MODEL = DEFAULT_MODEL  # the tokenizer the words come from, whatever the base model
WORD_LENGTHS = (3, 8)  # letters per word, inclusive
NUMBERS = (100, 9999)  # inclusive range of number inputs (digit tasks: 1000..9999)
TEST_POOL_MOD = 4  # an item is in the test pool iff crc32(text) % TEST_POOL_MOD == 0
DEFAULT_SIZES = {"train": 1500, "eval": 300}


# --- the word list ------------------------------------------------------------------------------------

def derive_words(tokens, lengths: tuple[int, int] = WORD_LENGTHS) -> tuple[str, ...]:
    """Whole lowercase alphabetic word tokens of a byte-level BPE vocabulary (``"Ġword"``: a word with
    its leading space), in vocabulary order, without duplicates."""
    lo, hi = lengths
    pattern = re.compile(rf"Ġ([a-z]{{{lo},{hi}}})")
    return tuple(dict.fromkeys(m.group(1) for m in map(pattern.fullmatch, tokens) if m))


@functools.lru_cache(maxsize=1)
def vocabulary_words() -> tuple[str, ...]:
    """`derive_words` of the embedded SmolLM2 tokenizer. Reading the GGUF file takes seconds, so the
    list is cached under ``cache_dir()/task_family`` (keyed by the file's size and time)."""
    from llgbm_jax.base.gguf_file import gguf_tokens
    from llgbm_jax.base.model import cache_dir, embedded_gguf_path
    from llgbm_jax.utils.io import write_json_atomic

    gguf_path = embedded_gguf_path(WORDS_MODEL)
    st = os.stat(gguf_path)
    path = os.path.join(cache_dir(), "task_family",
                        f"words-{WORDS_MODEL}-{st.st_size}-{int(st.st_mtime)}-{WORD_LENGTHS[0]}-{WORD_LENGTHS[1]}.json")
    if os.path.isfile(path):
        with open(path) as f:
            return tuple(json.load(f))
    words = derive_words(gguf_tokens(gguf_path))
    write_json_atomic(path, list(words))
    return words


def in_test_pool(item) -> bool:
    """Whether a word or number belongs to the test pool (fixed, independent of the seed)."""
    return zlib.crc32(str(item).encode()) % TEST_POOL_MOD == 0


@functools.lru_cache(maxsize=8)
def _pool(source: str, split: str) -> tuple:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    items = {"words": vocabulary_words, "numbers": lambda: range(NUMBERS[0], NUMBERS[1] + 1),
             "4digits": lambda: range(1000, 10000)}[source]()
    return tuple(x for x in items if in_test_pool(x) == (split == "eval"))


# --- kinds and transforms -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Transform:
    """One task: an instruction and the function from an input to the gold output text."""

    name: str  # the task is ``fam_<name>``
    instruction: str  # the prompt is ``f"{instruction}: {input}"``
    fn: Callable[[Any], str]
    param: int | None = None


@dataclasses.dataclass(frozen=True)
class Kind:
    """Tasks that share inputs and options. ``source``: ``"words"`` (``size`` distinct words),
    ``"numbers"`` or ``"4digits"`` (one integer)."""

    name: str
    source: str
    size: int
    transforms: tuple[Transform, ...]

    @property
    def params(self) -> tuple[int, ...]:
        """The parameter values of a parametric kind (empty otherwise)."""
        return tuple(t.param for t in self.transforms if t.param is not None)

    def render(self, x) -> str:
        return " ".join(x) if self.source == "words" else str(x)

    def sample(self, rng: np.random.Generator, pool: tuple):
        if self.source == "words":
            return tuple(pool[i] for i in rng.choice(len(pool), self.size, replace=False))
        return int(pool[rng.integers(len(pool))])


def _words(fn):
    return lambda ws: " ".join(fn(list(ws)))


def _rotate(k):
    return _words(lambda ws: ws[k:] + ws[:k])


def _swap_ends(ws):
    return [ws[-1]] + ws[1:-1] + [ws[0]]


_ORDINAL = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth"}


def _digits(fn):
    return lambda n: fn(str(n))


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("word_order", "words", 4, (
        Transform("reverse_words", "Reverse the order of these words", _words(lambda ws: ws[::-1])),
        Transform("sort_words", "Sort these words alphabetically", _words(sorted)),
        Transform("sort_words_desc", "Sort these words in reverse alphabetical order",
                  _words(lambda ws: sorted(ws, reverse=True))),
        Transform("swap_first_last", "Swap the first and the last of these words", _words(_swap_ends)),
    )),
    Kind("rotate", "words", 5, tuple(
        Transform(f"rotate_{k}", f"Move the first {k} word{'s' if k > 1 else ''} to the end", _rotate(k), k)
        for k in (1, 2, 3, 4))),
    Kind("nth_word", "words", 5, tuple(
        Transform(f"word_{k}", f"Write the {_ORDINAL[k]} word of this list", (lambda k: lambda ws: ws[k - 1])(k), k)
        for k in (1, 2, 3, 4, 5))),
    Kind("letters", "words", 3, (
        Transform("uppercase", "Write these words in capital letters", _words(lambda ws: [w.upper() for w in ws])),
        Transform("capitalize", "Capitalise each of these words", _words(lambda ws: [w.capitalize() for w in ws])),
        Transform("reverse_letters", "Spell each of these words backwards", _words(lambda ws: [w[::-1] for w in ws])),
        Transform("first_letters", "Write the first letter of each word", lambda ws: "".join(w[0] for w in ws)),
        Transform("last_letters", "Write the last letter of each word", lambda ws: "".join(w[-1] for w in ws)),
    )),
    Kind("format", "words", 3, (
        Transform("snake_case", "Join these words in snake_case", lambda ws: "_".join(ws)),
        Transform("kebab_case", "Join these words with hyphens", lambda ws: "-".join(ws)),
        Transform("camel_case", "Write these words in camelCase",
                  lambda ws: ws[0] + "".join(w.capitalize() for w in ws[1:])),
        Transform("comma_list", "Separate these words with commas", lambda ws: ", ".join(ws)),
    )),
    Kind("add", "numbers", 1, tuple(
        Transform(f"add_{k}", f"Add {k} to this number", (lambda k: lambda n: str(n + k))(k), k) for k in (1, 2, 3, 5, 7))),
    Kind("multiply", "numbers", 1, tuple(
        Transform(f"multiply_{k}", f"Multiply this number by {k}", (lambda k: lambda n: str(n * k))(k), k)
        for k in (2, 3, 4, 5, 10))),
    Kind("digits", "4digits", 1, (
        Transform("digit_sum", "Add up the digits of this number", _digits(lambda s: str(sum(map(int, s))))),
        Transform("reverse_digits", "Write the digits of this number in reverse order", _digits(lambda s: s[::-1])),
        Transform("sort_digits", "Sort the digits of this number from smallest to largest",
                  _digits(lambda s: "".join(sorted(s)))),
        Transform("max_digit", "Write the largest digit of this number", _digits(max)),
    )),
)}


def _find(task_name: str) -> tuple[Kind, Transform]:
    for kind in KINDS.values():
        for t in kind.transforms:
            if f"fam_{t.name}" == task_name:
                return kind, t
    raise KeyError(f"{task_name!r} is not a task of the family; known: {family_task_names()}")


def family_task_names(kind: str | None = None) -> list[str]:
    """The family's task names, kind by kind in `KINDS` order (``kind``: only that kind's)."""
    if kind is not None and kind not in KINDS:
        raise KeyError(f"unknown task family kind {kind!r}; known: {sorted(KINDS)}")
    return [f"fam_{t.name}" for k in KINDS.values() if kind in (None, k.name) for t in k.transforms]


def kind_of(task_name: str) -> str:
    return _find(task_name)[0].name


# --- records -----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _inputs(kind: str, split: str, n: int, seed: int) -> tuple:
    """``n`` distinct inputs of a kind from the split's pool on which the kind's tasks all answer
    differently (so they are mutually exclusive: inputs such as already sorted words are skipped)."""
    k = KINDS[kind]
    pool = _pool(k.source, split)
    rng = np.random.default_rng([seed, zlib.crc32(kind.encode()), SPLITS.index(split)])
    out, seen = [], set()
    for _ in range(50 * n):
        x = k.sample(rng, pool)
        if x not in seen and len({t.fn(x) for t in k.transforms}) == len(k.transforms):
            seen.add(x)
            out.append(x)
            if len(out) == n:
                return tuple(out)
    raise ValueError(f"task family kind {kind!r}: its {split} pool ({len(pool)} items) gives fewer than {n} "
                     f"distinct inputs")


def make_records(task_name: str, split: str, n: int, seed: int = 0) -> list[Record]:
    """``n`` records of a family task: ``{"prompt", "response", "options", "input"}``. The same seed gives
    the same records; every task of a kind gets the same inputs in the same order."""
    kind, t = _find(task_name)
    records = []
    for x in _inputs(kind.name, split, n, seed):
        options = list(dict.fromkeys(tr.fn(x) for tr in kind.transforms))
        records.append({"prompt": f"{t.instruction}: {kind.render(x)}", "response": t.fn(x), "options": options,
                        "input": kind.render(x)})
    return records


@dataclasses.dataclass(frozen=True)
class FamilyTask(Task):
    """A family task: a ``cloze`` `Task` whose records come from `make_records`, not from files."""

    seed: int = 0
    num_train: int = DEFAULT_SIZES["train"]
    num_eval: int = DEFAULT_SIZES["eval"]
    exact_match: bool = True  # also scored by greedy generation with exact match (`build_zoo`)

    def load(self, split: str, data_dir: str | None = None) -> list[Record]:
        """Generated records (``data_dir`` is ignored). Training records never share their
        `question_key` with an evaluation record: the input pools are disjoint."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return make_records(self.name, split, self.num_train if split == "train" else self.num_eval, self.seed)

    def has_data(self, data_dir: str | None = None) -> bool:
        return True

    def split_file(self, split: str) -> str:
        raise ValueError(f"task {self.name!r} is generated in memory (llgbm_jax.tasks.family); it has no data file")


def family_task(name: str, seed: int = 0, **sizes) -> FamilyTask:
    """A family task with its own seed or sizes (the registered ones use seed 0 and `DEFAULT_SIZES`)."""
    _find(name)
    return FamilyTask(name, "cloze", seed=seed, **sizes)


def leaked_records(task: Task) -> list[Record]:
    """Training records whose `question_key` matches an evaluation record's (empty by construction)."""
    held_out = {question_key(r) for r in task.load("eval")}
    return [r for r in task.load("train") if question_key(r) in held_out]


for _name in family_task_names():
    register_task(family_task(_name), overwrite=True)
