"""A family of generated tasks that a 135M model's teachers learn: string and number transforms.

Every task applies one transform to an input given after its instruction (``"Reverse the order of
these words: w1 w2 w3 w4"`` → ``"w4 w3 w2 w1"``). Tasks are grouped in *kinds* that share their inputs
(12 kinds, 120 tasks); parametric kinds are dense enough to hold parameter values out (add or subtract k for
k = 1..20, multiply by 2..14, the k-th word of eight, rotate by 1..7, the first or last k words, a Caesar shift
by 1..13, repeat 2..9 times). A record's ``options`` are outputs of tasks of its kind on the same input
(`options_for`), so only the instruction tells which is right. Records are scored as ``cloze`` (option
log-likelihood) and, as a second score, by greedy generation with exact match
(`llgbm_jax.scoring.accuracy.exact_match_accuracy`). Each task also has at least four one-line
`descriptions` in other words than its instruction (conditions for a generator that sees no example).

Records are generated in memory from a seed, no file or download: the words are whole lowercase
alphabetic tokens of the embedded SmolLM2 tokenizer (whatever the base model), the numbers integers.
Train and test inputs come from disjoint pools (a word or number is a test item when the CRC32 of its
text is 0 mod 4, the same for every seed), so no test input, and no test word, is ever trained on.

Task names: ``fam_<transform>`` or ``fam_<transform>_<k>`` for parametric kinds (``fam_add_7``,
``fam_rotate_2``, ``fam_word_3``, ``fam_last_2``); `family_task_names` lists them, `KINDS` describes the
kinds so that experiments can hold out a parameter value or a kind. All tasks are registered in
`llgbm_jax.tasks.TASKS`.
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
    """One task: an instruction, the function from an input to the gold output text, and one-line
    descriptions of the task in other words (conditions for a generator that sees no examples)."""

    name: str  # the task is ``fam_<name>``
    instruction: str  # the prompt is ``f"{instruction}: {input}"``
    fn: Callable[[Any], str]
    param: int | None = None
    descriptions: tuple[str, ...] = ()


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
        """The distinct parameter values of a parametric kind, ascending (empty otherwise)."""
        return tuple(sorted({t.param for t in self.transforms if t.param is not None}))

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


def _caesar(k):
    return lambda ws: " ".join("".join(chr((ord(c) - 97 + k) % 26 + 97) for c in w) for w in ws)


def _digits(fn):
    return lambda n: fn(str(n))


_NUMBER = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
           "sixteen seventeen eighteen nineteen twenty").split()
_ORDINAL = ("zeroth first second third fourth fifth sixth seventh eighth ninth").split()
_TIMES = {1: "once", 2: "twice"}


def _plural(k: int, noun: str) -> str:
    return f"{_NUMBER[k]} {noun}{'s' if k > 1 else ''}"


def _parametric(prefix: str, ks, instruction, fn, descriptions) -> tuple[Transform, ...]:
    """Transforms ``<prefix>_<k>`` for each ``k``: ``instruction(k)``, ``fn(k)`` and ``descriptions(k)``."""
    return tuple(Transform(f"{prefix}_{k}", instruction(k), fn(k), k, tuple(descriptions(k))) for k in ks)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("word_order", "words", 4, (
        Transform("reverse_words", "Reverse the order of these words", _words(lambda ws: ws[::-1]), None, (
            "Write the words backwards, last word first.", "Output the list in reverse order.",
            "Flip the sequence of words so it ends with the first one.", "Read the words from right to left.")),
        Transform("sort_words", "Sort these words alphabetically", _words(sorted), None, (
            "Put the words in alphabetical order.", "Arrange the list from a to z.",
            "Order the words as a dictionary would.", "List the words sorted from A to Z.")),
        Transform("sort_words_desc", "Sort these words in reverse alphabetical order",
                  _words(lambda ws: sorted(ws, reverse=True)), None, (
            "Put the words in reverse alphabetical order.", "Arrange the list from z to a.",
            "Order the words the opposite way to a dictionary.", "List the words sorted from Z to A.")),
        Transform("swap_first_last", "Swap the first and the last of these words", _words(_swap_ends), None, (
            "Exchange the first word with the last word.", "Put the last word first and the first word last.",
            "Switch the two words at the ends of the list.", "Trade places between the opening and closing words.")),
    )),
    Kind("rotate", "words", 8, _parametric(
        "rotate", range(1, 8), lambda k: f"Move the first {k} word{'s' if k > 1 else ''} to the end", _rotate,
        lambda k: (f"Rotate the list left by {_NUMBER[k]}.", f"Take the first {_plural(k, 'word')} and put them last.",
                   f"Start the list at word number {k + 1} and wrap around.",
                   f"Shift the words {_NUMBER[k]} place{'s' if k > 1 else ''} to the left, cyclically."))),
    Kind("nth_word", "words", 8, _parametric(
        "word", range(1, 9), lambda k: f"Write the {_ORDINAL[k]} word of this list",
        lambda k: lambda ws: ws[k - 1],
        lambda k: (f"Pick the word in position {k}.", f"Return only the {_ORDINAL[k]} word.",
                   f"Output word number {_NUMBER[k]} of the list.",
                   f"Give the word that comes {_ORDINAL[k]} in the sequence."))),
    Kind("letters", "words", 3, (
        Transform("uppercase", "Write these words in capital letters", _words(lambda ws: [w.upper() for w in ws]),
                  None, ("Convert every letter to upper case.", "Shout the words in capitals.",
                         "Make all the letters uppercase.", "Rewrite the words in all caps.")),
        Transform("capitalize", "Capitalise each of these words", _words(lambda ws: [w.capitalize() for w in ws]),
                  None, ("Start every word with a capital letter.", "Make the first letter of each word uppercase.",
                         "Write the words in title case.", "Give each word an initial capital.")),
        Transform("reverse_letters", "Spell each of these words backwards",
                  _words(lambda ws: [w[::-1] for w in ws]), None, (
            "Reverse the letters inside every word.", "Write each word from its last letter to its first.",
            "Mirror the spelling of each word.", "Turn every word around letter by letter.")),
        Transform("first_letters", "Write the first letter of each word", lambda ws: "".join(w[0] for w in ws),
                  None, ("Join the initial letters of the words.", "Make an acronym from the words in lower case.",
                         "Output the starting letter of every word, without spaces.",
                         "Keep only the first letter of each word.")),
        Transform("last_letters", "Write the last letter of each word", lambda ws: "".join(w[-1] for w in ws),
                  None, ("Join the final letters of the words.", "Output the ending letter of every word, "
                         "without spaces.", "Keep only the last letter of each word.",
                         "Collect the letter each word ends with.")),
    )),
    Kind("format", "words", 3, (
        Transform("snake_case", "Join these words in snake_case", lambda ws: "_".join(ws), None, (
            "Connect the words with underscores.", "Write the words as one snake case identifier.",
            "Replace the spaces between words by underscores.", "Turn the words into a python variable name.")),
        Transform("kebab_case", "Join these words with hyphens", lambda ws: "-".join(ws), None, (
            "Connect the words with dashes.", "Write the words in kebab case.",
            "Replace the spaces between words by hyphens.", "Turn the words into a URL slug.")),
        Transform("camel_case", "Write these words in camelCase",
                  lambda ws: ws[0] + "".join(w.capitalize() for w in ws[1:]), None, (
            "Join the words, capitalising every word after the first.", "Write the words as one camel case name.",
            "Remove the spaces and start each later word with a capital.",
            "Turn the words into a java variable name.")),
        Transform("comma_list", "Separate these words with commas", lambda ws: ", ".join(ws), None, (
            "Put a comma between the words.", "Write the words as a comma separated list.",
            "Replace each space between words by a comma and a space.", "List the words with commas in between.")),
    )),
    Kind("add", "numbers", 1, _parametric(
        "add", range(1, 21), lambda k: f"Add {k} to this number", lambda k: lambda n: str(n + k),
        lambda k: (f"Add {_NUMBER[k]} to the number.", f"Increase the number by {k}.",
                   f"Return the number plus {_NUMBER[k]}.", f"Count {_NUMBER[k]} up from the given number."))),
    Kind("subtract", "numbers", 1, _parametric(
        "subtract", range(1, 21), lambda k: f"Subtract {k} from this number", lambda k: lambda n: str(n - k),
        lambda k: (f"Take {_NUMBER[k]} away from the number.", f"Decrease the number by {k}.",
                   f"Return the number minus {_NUMBER[k]}.", f"Count {_NUMBER[k]} down from the given number."))),
    Kind("multiply", "numbers", 1, _parametric(
        "multiply", range(2, 15), lambda k: f"Multiply this number by {k}", lambda k: lambda n: str(n * k),
        lambda k: (f"Multiply the number by {_NUMBER[k]}.", f"Return {_NUMBER[k]} times the number.",
                   f"Scale the number by a factor of {k}.", f"Give the product of the number and {_NUMBER[k]}."))),
    Kind("digits", "4digits", 1, (
        Transform("digit_sum", "Add up the digits of this number", _digits(lambda s: str(sum(map(int, s)))), None, (
            "Sum the digits of the number.", "Return the total of all its digits.",
            "Compute the digit sum.", "Add each digit of the number together.")),
        Transform("reverse_digits", "Write the digits of this number in reverse order", _digits(lambda s: s[::-1]),
                  None, ("Reverse the number digit by digit.", "Read the digits from right to left.",
                         "Write the number backwards.", "Mirror the order of the digits.")),
        Transform("sort_digits", "Sort the digits of this number from smallest to largest",
                  _digits(lambda s: "".join(sorted(s))), None, (
            "Put the digits in ascending order.", "Arrange the digits from low to high.",
            "Order the digits increasingly.", "List the digits sorted, smallest first.")),
        Transform("max_digit", "Write the largest digit of this number", _digits(max), None, (
            "Return the biggest digit.", "Find the highest digit in the number.",
            "Output the maximum of the digits.", "Which digit is the largest? Write it.")),
    )),
    Kind("slice", "words", 8, _parametric(
        "first", range(1, 8), lambda k: f"Write the first {k} word{'s' if k > 1 else ''} of this list",
        lambda k: _words(lambda ws: ws[:k]),
        lambda k: (f"Keep only the first {_plural(k, 'word')}.",
                   f"Return the opening {_plural(k, 'word')} of the list.",
                   f"Cut the list after word {k}.", f"Drop everything after the first {_plural(k, 'word')}."))
        + _parametric(
        "last", range(1, 8), lambda k: f"Write the last {k} word{'s' if k > 1 else ''} of this list",
        lambda k: _words(lambda ws: ws[-k:]),
        lambda k: (f"Keep only the last {_plural(k, 'word')}.", f"Return the closing {_plural(k, 'word')} of the list.",
                   f"Cut the list before its final {_plural(k, 'word')}.",
                   f"Drop everything before the last {_plural(k, 'word')}."))),
    Kind("caesar", "words", 1, _parametric(
        "caesar", range(1, 14), lambda k: f"Shift each letter of this word {k} place{'s' if k > 1 else ''} "
        "forward in the alphabet", _caesar,
        lambda k: (f"Apply a Caesar cipher with a shift of {_NUMBER[k]}.",
                   f"Replace every letter by the one {_NUMBER[k]} later in the alphabet, wrapping after z.",
                   f"Encode the word with ROT{k}.", f"Move each letter {k} steps along the alphabet."))),
    Kind("repeat", "words", 1, _parametric(
        "repeat", range(2, 10), lambda k: f"Write this word {k} times", lambda k: lambda ws: " ".join(ws * k),
        lambda k: (f"Repeat the word {_TIMES.get(k, _NUMBER[k] + ' times')}.",
                   f"Say the word {_NUMBER[k]} times in a row.", f"Output {_NUMBER[k]} copies of the word.",
                   f"Echo the word so that it appears {k} times."))),
)}
MAX_OPTIONS = 5  # a kind with more tasks gives each record the gold and MAX_OPTIONS - 1 other tasks' outputs


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


def options_for(kind: Kind, t: Transform, x) -> list[str]:
    """A record's options: the outputs of every task of the kind on ``x`` (in kind order) for a kind of at
    most `MAX_OPTIONS` tasks; for a larger kind the gold and the outputs of ``MAX_OPTIONS - 1`` other tasks
    drawn per input (the same draw for every task of the kind, so most of a record's options are shared),
    in an order given by a hash of the option texts, so the gold's position says nothing."""
    if len(kind.transforms) <= MAX_OPTIONS:
        return list(dict.fromkeys(tr.fn(x) for tr in kind.transforms))
    text = kind.render(x)
    order = np.random.default_rng([zlib.crc32(kind.name.encode()), zlib.crc32(text.encode())]).permutation(
        len(kind.transforms))
    others = [kind.transforms[i] for i in order if kind.transforms[i] is not t][:MAX_OPTIONS - 1]
    options = [t.fn(x)] + [tr.fn(x) for tr in others]
    return sorted(options, key=lambda o: zlib.crc32(f"{text}\x00{o}".encode()))


def make_records(task_name: str, split: str, n: int, seed: int = 0) -> list[Record]:
    """``n`` records of a family task: ``{"prompt", "response", "options", "input"}``. The same seed gives
    the same records; every task of a kind gets the same inputs in the same order."""
    kind, t = _find(task_name)
    return [{"prompt": f"{t.instruction}: {kind.render(x)}", "response": t.fn(x), "options": options_for(kind, t, x),
             "input": kind.render(x)} for x in _inputs(kind.name, split, n, seed)]


def descriptions(task_name: str) -> tuple[str, ...]:
    """One-line natural-language descriptions of a task (at least four), none of them its instruction."""
    return _find(task_name)[1].descriptions


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
