"""Probe prompts: the fixed, versioned inputs on which behavioural deltas are measured (`llgbm_jax.conditions.deltas`).

A probe set is about half generic instructions written here and half prompts drawn (seeded) from the
train split of each probe task, all in the base model's chat template and at most ``max_probe_length``
tokens long. Its ``hash`` (version, texts and token ids) is part of every delta cache key, so changing
any probe, the tokenizer or `PROBE_VERSION` never reuses an old delta.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from typing import Sequence

import numpy as np

PROBE_VERSION = 1
DEFAULT_PROBE_TASKS = ("arc_e_cloze", "boolq", "obqa_cloze", "gsm8k")
FAMILY_PROBE_TASKS = ("fam_reverse_words", "fam_word_2", "fam_camel_case", "fam_add_5")  # one per kind of the cpu zoo

GENERIC_INSTRUCTIONS = (
    "Explain why the sky is blue in two sentences.",
    "List three uses of a paper clip.",
    "Write a short poem about the sea.",
    "What is 17 times 23? Show your working.",
    "Summarize the water cycle for a ten-year-old.",
    "Give me a recipe for a simple tomato soup.",
    "Translate 'good morning, how are you?' into French.",
    "What is the capital of Australia?",
    "Describe how a bicycle works.",
    "Write a polite email asking to reschedule a meeting.",
    "Compute the area of a circle with radius 3.",
    "Name four animals that live in the Arctic.",
    "Why do leaves change color in autumn?",
    "Tell me a fun fact about the Moon.",
    "Write one sentence that uses the word 'although'.",
    "If a train travels 60 miles in 1.5 hours, what is its average speed?",
    "What are the main differences between a virus and a bacterium?",
    "Suggest three names for a small coffee shop.",
    "How many days are there in a leap year, and why?",
    "Explain what a noun is, with two examples.",
)


@dataclasses.dataclass(frozen=True, eq=False)
class ProbeSet:
    """Left-padded probe tokens (``ids``, ``mask``: int32 ``[P, S]``, S a multiple of 16), the formatted
    probe strings, where each came from (``"generic"`` or a task name) and the content hash."""

    ids: np.ndarray
    mask: np.ndarray
    texts: tuple[str, ...]
    sources: tuple[str, ...]
    hash: str

    def __len__(self) -> int:
        return len(self.texts)


def probe_hash(texts: Sequence[str], ids: np.ndarray, mask: np.ndarray) -> str:
    """sha256 over `PROBE_VERSION`, the texts and the token ids and mask (shape and bytes)."""
    h = hashlib.sha256(json.dumps({"version": PROBE_VERSION, "texts": list(texts)}).encode())
    for x in (ids, mask):
        x = np.ascontiguousarray(x, np.int32)
        h.update(repr(x.shape).encode())
        h.update(x.tobytes())
    return h.hexdigest()


def probe_set(texts: Sequence[str], ids, mask, sources: Sequence[str] | None = None) -> ProbeSet:
    """A `ProbeSet` of given tokens (hash computed); `build_probes` is the usual way to get one."""
    ids, mask = np.array(ids, np.int32), np.array(mask, np.int32)  # own read-only copies: the hash stays true
    ids.setflags(write=False)
    mask.setflags(write=False)
    if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[0] != len(texts):
        raise ValueError(f"probe ids {ids.shape} / mask {mask.shape} must both be [P, S] with P = {len(texts)} texts")
    if not np.all(mask[:, -1] == 1):
        raise ValueError("probes must be left-padded: every row's last token is real")
    sources = tuple(sources) if sources is not None else ("",) * len(texts)
    return ProbeSet(ids, mask, tuple(texts), sources, probe_hash(texts, ids, mask))


def _draw(candidates, rng: np.random.Generator, count: int, fmt, length, max_len: int, seen: set, what: str):
    """``count`` formatted candidates in seeded order, skipping repeats and those over ``max_len`` tokens."""
    out = []
    for i in rng.permutation(len(candidates)):
        if len(out) == count:
            break
        text = fmt(candidates[i])
        if text not in seen and length(text) <= max_len:
            seen.add(text)
            out.append(text)
    if len(out) < count:
        raise ValueError(f"build_probes: only {len(out)} distinct {what} fit in max_probe_length={max_len} "
                         f"tokens; {count} needed")
    return out


def default_probe_tasks(data_dir: str | None = None) -> tuple[str, ...]:
    """The tasks probes are drawn from: those of `DEFAULT_PROBE_TASKS` whose data is in the data folder, else
    (no data folder) `FAMILY_PROBE_TASKS` of the generated family."""
    from llgbm_jax.tasks.registry import get_task

    return tuple(t for t in DEFAULT_PROBE_TASKS if get_task(t).has_data(data_dir)) or FAMILY_PROBE_TASKS


def build_probes(base_model, num_probes: int, max_probe_length: int, seed: int,
                 tasks: Sequence[str] = DEFAULT_PROBE_TASKS, data_dir: str | None = None) -> ProbeSet:
    """The probe set: ``num_probes // 2`` generic instructions (at most all of `GENERIC_INSTRUCTIONS`) and
    the rest spread evenly over ``tasks`` (earlier tasks get one more when it does not divide), drawn from
    each task's train split (never its eval split). Deterministic in (tokenizer, arguments)."""
    from llgbm_jax.tasks.registry import get_task

    if num_probes <= 0 or max_probe_length <= 0:
        raise ValueError(f"build_probes: num_probes ({num_probes}) and max_probe_length ({max_probe_length}) "
                         f"must be positive")
    resolved = []
    for name in tasks:
        try:
            resolved.append(get_task(name, data_dir))
        except KeyError as e:
            raise ValueError(f"build_probes: probe task {name!r} is not registered ({e.args[0]})") from None
    n_generic = num_probes if not resolved else min(num_probes // 2, len(GENERIC_INSTRUCTIONS))
    n_task = num_probes - n_generic
    counts = [n_task // len(resolved) + (i < n_task % len(resolved)) for i in range(len(resolved))] if resolved else []

    tok = base_model.tokenizer
    length = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    seen: set[str] = set()
    texts = _draw(GENERIC_INSTRUCTIONS, np.random.default_rng(seed), n_generic, base_model.chat_prompt, length,
                  max_probe_length, seen, "generic instructions")
    sources = ["generic"] * n_generic
    for task, count in zip(resolved, counts):
        if count:
            rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
            records = task.load("train", data_dir)
            texts += _draw(records, rng, count, lambda r, t=task: t.format_prompt(r, base_model), length,
                           max_probe_length, seen, f"{task.name} train prompts")
            sources += [task.name] * count
    ids, mask = base_model.encode(texts, padding_side="left", pad_to_multiple_of=16)
    return probe_set(texts, ids, mask, sources)
