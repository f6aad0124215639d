"""Answer formats of the four task types: the options scored for a record, its gold answer, and reading
an answer from generated text.

- ``mcq``: the response is ``[label]``; the options are the labels written in the prompt on lines
  ``"A: ..."`` (A–E and 1–4 both occur), each scored as the answer string ``"[A]"``.
- ``cloze``: the question without its option lines; the response is the gold answer's text and the
  options (a record field ``"options"``) are scored as texts (`mcq_to_cloze` converts ``mcq`` records).
- ``bool``: the response is ``[True]`` or ``[False]``.
- ``gsm8k``: the response is a worked solution ending in ``#### <number>``.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Sequence

TASK_TYPES = ("mcq", "cloze", "bool", "gsm8k")
BOOL_OPTIONS = ("[True]", "[False]")

Record = dict[str, Any]


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


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def extract_cloze_answer(text: str, options: Sequence[str]) -> str | None:
    """The option a generated answer gives: the longest option the text starts with (case and
    punctuation ignored), else the one option the text contains; ``None`` otherwise."""
    said = normalise(text)
    norm = {o: normalise(o) for o in options}
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


def end_of_turn_id(base_model) -> int:
    """The token the chat template writes right after an assistant reply (``<|im_end|>`` for SmolLM2 and
    Qwen), provided generation stops on it; otherwise the tokenizer's EOS, else the first EOS id.
    (``eos_token_ids[0]`` alone can be ``<|endoftext|>``: Qwen's generation config lists both.)"""
    return _end_of_turn(base_model.tokenizer, tuple(base_model.eos_token_ids))


@functools.lru_cache(maxsize=8)
def _end_of_turn(tok, eos_ids: tuple[int, ...]) -> int:
    user = [{"role": "user", "content": "Hi"}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": "OK"}], tokenize=False)
    if full.startswith(prompt + "OK"):
        rest = tok(full[len(prompt) + 2:], add_special_tokens=False)["input_ids"]
        if rest and rest[0] in eos_ids:
            return int(rest[0])
    return int(tok.eos_token_id) if tok.eos_token_id in eos_ids else int(eos_ids[0])
