"""Task accuracy of the base model, a teacher LoRA or a generated LoRA.

- ``mcq``/``bool``: option log-likelihood. The token prefix shared by all prompts (system message and
  chat template, about half of each prompt) is run once; one forward per batch of questions continues
  from its KV cache; every option's few answer tokens are then scored in one batched cached step (the
  cache repeated per option), so a question costs about one forward of its own tokens however many
  options it has. Answers are tokenized jointly with their prompt (`split_answer_tokens`). The prediction
  is the option with the highest summed log-probability; ``accuracy_norm`` uses the sum divided by the
  answer's length in characters (lm-eval-harness's ``acc_norm``). No parse failures by construction.
- ``gsm8k``: greedy generation with the KV cache (`BaseModel.generate`), then the number is read by
  `llgbm_jax.tasks.extract_gsm8k_answer`; unreadable outputs count as parse failures (and wrong).
- exact match (`exact_match_accuracy`, the task family's second score): greedy generation, the
  stripped output must equal the gold response.

Questions are sorted by length and batched; widths are padded to multiples of ``pad_to_multiple_of``
and the last batch is filled with repeats, so only a few shapes are ever compiled.

``lora`` may be ``None``, one adapter for every question, or a batch of adapters with a leading axis
equal to the number of questions scored (question i uses adapter i).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llgbm_jax.base import decoder
from llgbm_jax.lora.adapter import LoRA
from llgbm_jax.scoring.stats import wilson_interval
from llgbm_jax.tasks.formats import Record, end_of_turn_id
from llgbm_jax.tasks.registry import Task, resolve_task
from llgbm_jax.utils.compile_stats import reports_compilations
from llgbm_jax.utils.mesh import BatchPlacer

GENERATION_BATCH = 16  # prompts per greedy-decoding batch
OPTION_BATCH = 16  # questions per option-scoring batch (8 was 10% slower per question on the family tasks)

# --- cached option scoring (pure, jitted) -------------------------------------------------------------

def _repeat_rows(tree, k: int, axis: int):
    return jax.tree_util.tree_map(lambda x: jnp.repeat(x, k, axis=axis), tree)


@functools.partial(jax.jit, static_argnames=("config",))
def prefix_cache(params, config, prefix_ids, lora=None) -> decoder.KVCache:
    """The KV cache of one token sequence shared by every prompt (``prefix_ids``: ``[S]``)."""
    s = prefix_ids.shape[0]
    return decoder.prefill(params, config, prefix_ids[None], jnp.ones((1, s), jnp.int32), lora, length=s,
                           padding="none")[1]


@functools.partial(jax.jit, static_argnames=("config",))
def option_token_logprobs(params, config, prompt_ids, prompt_mask, option_ids, option_mask, lora=None, prefix=None):
    """Log-probabilities of each option's tokens given its prompt.

    ``prompt_ids``/``prompt_mask``: ``[B, P]`` left-padded (the last column is each prompt's last
    token). ``option_ids``/``option_mask``: ``[B, K, T]`` right-padded answer tokens. ``prefix``: an
    optional `prefix_cache` of tokens that precede every prompt (computed with the same ``lora``).
    Returns ``[B, K, T]`` float32, zero where ``option_mask`` is zero. ``lora`` is ``None``, one
    adapter, or one adapter per prompt (leading axis ``B``; then ``prefix`` must be ``None``).
    """
    b, p = prompt_ids.shape
    _, k, t = option_ids.shape
    s = 0 if prefix is None else prefix.k.shape[3]
    positions = s + decoder.position_ids(prompt_mask)
    if prefix is None:
        h, cache = decoder.prefill(params, config, prompt_ids, prompt_mask, lora, length=p + t, positions=positions)
    else:  # every row starts with the shared prefix in slots 0..S-1
        cache = decoder.init_cache(config, b, s + p + t, params["embed"].dtype)
        cache = decoder.KVCache(cache.k.at[:, :, :, :s].set(prefix.k), cache.v.at[:, :, :, :s].set(prefix.v),
                                cache.valid.at[:, :s].set(True), jnp.int32(s))
        h, cache = decoder.forward(params, config, prompt_ids, prompt_mask, lora, positions=positions, cache=cache)
    first = jax.nn.log_softmax(decoder.lm_head(params, config, h[:, -1]), axis=-1)  # [B, V]
    ids = option_ids.reshape(b * k, t)
    lp0 = jnp.take_along_axis(jnp.repeat(first, k, axis=0), ids[:, :1], axis=-1)  # [BK, 1]
    if t > 1:
        # Feed tokens 0..T-2 of every option after its own copy of the prompt's cache.
        rows = decoder.KVCache(_repeat_rows(cache.k, k, 1), _repeat_rows(cache.v, k, 1),
                               jnp.repeat(cache.valid, k, axis=0), cache.index)
        row_lora = lora if (lora is None or lora.batch_shape == ()) else _repeat_rows(lora, k, 0)
        start = jnp.repeat(s + jnp.sum(prompt_mask, axis=-1), k)[:, None]
        mask = option_mask.reshape(b * k, t)
        h2, _ = decoder.forward(params, config, ids[:, :-1], mask[:, :-1], row_lora,
                                positions=start + jnp.arange(t - 1), cache=rows)
        rest = jax.nn.log_softmax(decoder.lm_head(params, config, h2), axis=-1)  # [BK, T-1, V]
        lp = jnp.concatenate([lp0, jnp.take_along_axis(rest, ids[:, 1:, None], axis=-1)[..., 0]], axis=1)
    else:
        lp = lp0
    return jnp.where(option_mask > 0, lp.reshape(b, k, t), 0.0)


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all sequences."""
    first, n = seqs[0], 0
    while n < len(first) and all(len(x) > n and x[n] == first[n] for x in seqs):
        n += 1
    return n


def split_answer_tokens(tokenizer, prompt: str, options: Sequence[str],
                        end_of_turn: int | None = None) -> tuple[list[int], list[list[int]], bool]:
    """Tokenize ``prompt + option`` jointly and split each into a shared prefix and the option's tokens.

    Normally the prefix is exactly the prompt's own tokens. If a BPE merge crosses the boundary
    for some option, the prefix falls back to the longest run of prompt tokens that every joint
    tokenization starts with, and the rest of the prompt is scored with each option (from the same
    context for all options); the flag ``clean`` is then False.

    When one option's tokens start another's ("cat cat" and "cat cat cat"), the shorter one's summed
    log-probability can never be lower, so ``end_of_turn`` (the token that ends a reply) is appended to every
    option of that question: the options are then scored as whole replies. Other questions are unchanged.
    """
    enc = tokenizer([prompt] + [prompt + o for o in options], add_special_tokens=False)["input_ids"]
    p_ids, joint = enc[0], enc[1:]
    n = len(p_ids)
    clean = all(j[:n] == p_ids and len(j) > n for j in joint)
    if not clean:
        n = min(common_prefix_length([p_ids] + joint), min(len(j) for j in joint) - 1)
        if n <= 0:
            raise ValueError(f"prompt and options share no tokens: {prompt!r:.100} / {options}")
    answers = [j[n:] for j in joint]
    if end_of_turn is not None and has_prefix_option(answers):
        answers = [a + [end_of_turn] for a in answers]
    return joint[0][:n], answers, clean


def has_prefix_option(answers: Sequence[Sequence[int]]) -> bool:
    """Whether one option's tokens are a proper prefix of another's."""
    return any(len(a) < len(b) and list(b[:len(a)]) == list(a) for a in answers for b in answers)


def option_scoring_key(task, records: Sequence[Record]) -> dict[str, bool]:
    """What a cache key of option scores needs besides the questions: ``{"whole_replies": True}`` when some cloze
    record's options start one another (scored as whole replies since then, `split_answer_tokens`); else nothing,
    so that keys of every other question set stay as they were."""
    if task.task_type == "cloze" and any(has_prefix_option(task.options(r)) for r in records):
        return {"whole_replies": True}
    return {}


def _pad_to(n: int, multiple: int | None) -> int:
    return -(-n // multiple) * multiple if multiple else n


def _batches(order: np.ndarray, batch_size: int):
    """Index batches in ``order``; the last batch is filled up with its last index."""
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        yield np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])]), len(idx)


def _lora_rows(lora: LoRA | None, idx: np.ndarray, n: int):
    if lora is None or lora.batch_shape == ():
        return lora
    if lora.batch_shape != (n,):
        raise ValueError(f"LoRA batch shape {lora.batch_shape}: expected () for one adapter or ({n},) for one "
                         f"adapter per evaluated question")
    return jax.tree_util.tree_map(lambda x: x[jnp.asarray(idx)], lora)


def _progress(total: int, show: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not show, desc=desc, unit="q")


def score_options(base_model, prompts: Sequence[str], options: Sequence[Sequence[str]], lora: LoRA | None = None, *,
                  batch_size: int = 8, pad_to_multiple_of: int = 32, share_prefix: bool = True,
                  show_progress: bool = False, desc: str = "scoring",
                  devices: int | None = None) -> tuple[list[np.ndarray], int]:
    """Summed log-probability of each option string after each (already formatted) prompt (with the end-of-turn
    token where options start one another: `split_answer_tokens`).

    With ``share_prefix`` (and no per-question adapters), the token prefix common to all prompts
    (system message and template, about half of each prompt here) is run once and its KV cache reused.
    Returns ``(scores, boundary_merges)``: ``scores[i]`` is a float64 array with one entry per option
    of question i; ``boundary_merges`` counts prompts whose tokenization merged across the prompt/answer
    boundary (see `split_answer_tokens`). Each batch's questions are split over ``devices`` devices (default:
    as many as divide ``batch_size``), the model replicated (`llgbm_jax.utils.mesh.BatchPlacer`).
    """
    n = len(prompts)
    if n == 0:
        return [], 0
    if len(options) != n:
        raise ValueError(f"{n} prompts but {len(options)} option lists")
    eot = end_of_turn_id(base_model)
    splits = [split_answer_tokens(base_model.tokenizer, p, o, eot) for p, o in zip(prompts, options)]
    merges = sum(not clean for _, _, clean in splits)
    per_row = lora is not None and lora.batch_shape != ()
    s = 0
    if share_prefix and not per_row:
        s = min(common_prefix_length([pre for pre, _, _ in splits]), min(len(pre) for pre, _, _ in splits) - 1)
    placer = BatchPlacer(batch_size, devices)
    params = placer.params(base_model)
    prefix = (prefix_cache(params, base_model.config, np.asarray(splits[0][0][:s], np.int32), placer.shared(lora))
              if s > 0 else None)
    k_max = max(len(o) for o in options)
    t_len = [max(len(t) for t in toks) for _, toks, _ in splits]
    pad = base_model.pad_token_id
    order = np.argsort([len(pre) for pre, _, _ in splits], kind="stable")
    scores: list[np.ndarray | None] = [None] * n
    with _progress(n, show_progress, desc) as bar:
        for idx, real in _batches(order, batch_size):
            width = _pad_to(max(len(splits[i][0]) - s for i in idx), pad_to_multiple_of)
            t_max = 1 << (max(t_len[i] for i in idx) - 1).bit_length()  # per batch, in few shapes
            ids = np.full((batch_size, width), pad, np.int32)
            mask = np.zeros((batch_size, width), np.int32)
            opt = np.full((batch_size, k_max, t_max), pad, np.int32)
            opt_mask = np.zeros((batch_size, k_max, t_max), np.int32)
            for r, i in enumerate(idx):
                pre, toks, _ = splits[i]
                q = pre[s:]
                ids[r, width - len(q):], mask[r, width - len(q):] = q, 1
                for j, tk in enumerate(toks):
                    opt[r, j, :len(tk)], opt_mask[r, j, :len(tk)] = tk, 1
                for j in range(len(toks), k_max):  # absent options: a copy of option 0, ignored below
                    opt[r, j], opt_mask[r, j] = opt[r, 0], opt_mask[r, 0]
            rows = _lora_rows(lora, idx, n)
            rows = placer.rows(rows) if per_row else placer.shared(rows)
            lp = option_token_logprobs(params, base_model.config, *placer.rows((ids, mask, opt, opt_mask)), rows,
                                       prefix)
            sums = placer.gather(lp).astype(np.float64).sum(-1)
            for r, i in enumerate(idx[:real]):
                scores[i] = sums[r, :len(options[i])]
            bar.update(real)
    return scores, merges


# --- accuracy -------------------------------------------------------------------------------------------

def _summary(correct: int, total: int, parse_failures: int, seconds: float, task: Task) -> dict[str, Any]:
    return {"task": task.name, "task_type": task.task_type, "accuracy": correct / total if total else 0.0,
            "correct": int(correct), "total": int(total), "parse_failures": int(parse_failures),
            "ci95": list(wilson_interval(correct, total)), "seconds": seconds,
            "questions_per_s": total / seconds if seconds > 0 else float("inf")}


@reports_compilations
def compute_accuracy_with_lora(lora: LoRA | None, base_model, eval_samples: Sequence[Record], task, *,
                               max_samples: int | None = None, batch_size: int | None = None,
                               max_new_tokens: int = 256, pad_to_multiple_of: int = 32, share_prefix: bool = True,
                               show_progress: bool = True, return_details: bool = False) -> dict[str, Any]:
    """Accuracy of ``base_model`` (+ ``lora``) on ``eval_samples`` (records of the shared data format).

    ``task`` is a `Task`, a registered task name, or a task type. Returns a JSON-ready dict with
    ``accuracy``, ``correct``, ``total``, ``parse_failures``, ``ci95`` (Wilson), ``seconds``,
    ``questions_per_s``, ``compiled_programs`` and ``compile_seconds`` (`compile_stats`); for mcq, cloze
    and bool also ``accuracy_norm``, ``correct_norm``, ``ci95_norm`` and ``boundary_merges``.
    ``return_details=True`` adds per-question ``details`` (prediction, gold, and the option scores or the
    generated text).
    """
    task = resolve_task(task)
    samples = list(eval_samples)[:max_samples] if max_samples is not None else list(eval_samples)
    if not samples:
        raise ValueError("no evaluation samples")
    prompts = [task.format_prompt(r, base_model) for r in samples]
    golds = [task.answer(r) for r in samples]
    t0 = time.perf_counter()
    if task.task_type == "gsm8k":
        texts = generate_texts(base_model, prompts, lora, batch_size=batch_size or GENERATION_BATCH,
                               max_new_tokens=max_new_tokens,
                               pad_to_multiple_of=pad_to_multiple_of, show_progress=show_progress, desc=task.name)
        preds = [task.parse(t, r) for t, r in zip(texts, samples)]
        hits = [task.is_correct(p, r) for p, r in zip(preds, samples)]
        out = _summary(sum(hits), len(samples), sum(p is None for p in preds), time.perf_counter() - t0, task)
        if return_details:
            out["details"] = [{"pred": p, "gold": g, "correct": bool(h), "text": t}
                              for p, g, h, t in zip(preds, golds, hits, texts)]
        return out

    options = [task.options(r) for r in samples]
    scores, merges = score_options(base_model, prompts, options, lora, batch_size=batch_size or OPTION_BATCH,
                                   pad_to_multiple_of=pad_to_multiple_of, share_prefix=share_prefix,
                                   show_progress=show_progress, desc=task.name)
    preds = [o[int(np.argmax(s))] for o, s in zip(options, scores)]
    preds_norm = [o[int(np.argmax(s / np.array([len(x) for x in o])))] for o, s in zip(options, scores)]
    hits = [p == g for p, g in zip(preds, golds)]
    hits_norm = [p == g for p, g in zip(preds_norm, golds)]
    out = _summary(sum(hits), len(samples), 0, time.perf_counter() - t0, task)
    out.update(accuracy_norm=sum(hits_norm) / len(samples), correct_norm=int(sum(hits_norm)),
               ci95_norm=list(wilson_interval(sum(hits_norm), len(samples))), boundary_merges=int(merges))
    if return_details:
        out["details"] = [{"pred": p, "pred_norm": pn, "gold": g, "correct": bool(h), "options": list(o),
                           "logprobs": [float(x) for x in s]}
                          for p, pn, g, h, o, s in zip(preds, preds_norm, golds, hits, options, scores)]
    return out


def exact_match_accuracy(lora: LoRA | None, base_model, eval_samples: Sequence[Record], task, *,
                         max_samples: int | None = None, max_new_tokens: int | None = None, batch_size: int = 16,
                         pad_to_multiple_of: int = 32, show_progress: bool = True,
                         return_details: bool = False) -> dict[str, Any]:
    """Greedy generation (`generate_texts`) scored by exact match: the output, surrounding whitespace
    stripped, equals the record's ``response`` stripped (case-sensitive). ``max_new_tokens`` defaults to
    the longest gold response's token count + 2 (so an answer that goes on past its gold shows), rounded
    up to a multiple of 8 (fewer compilations of the generation loop). Returns
    ``accuracy``, ``correct``, ``total``, ``ci95``, ``seconds``, ``questions_per_s``, ``max_new_tokens``
    (and per-question ``details`` with ``return_details``)."""
    task = resolve_task(task)
    samples = list(eval_samples)[:max_samples] if max_samples is not None else list(eval_samples)
    if not samples:
        raise ValueError("no evaluation samples")
    golds = [r["response"].strip() for r in samples]
    if max_new_tokens is None:
        longest = max(len(x) for x in base_model.tokenizer(golds, add_special_tokens=False)["input_ids"])
        max_new_tokens = -(-(longest + 2) // 8) * 8
    t0 = time.perf_counter()
    texts = generate_texts(base_model, [task.format_prompt(r, base_model) for r in samples], lora,
                           batch_size=batch_size, max_new_tokens=max_new_tokens, pad_to_multiple_of=pad_to_multiple_of,
                           show_progress=show_progress, desc=f"{task.name} (exact match)")
    hits = [t.strip() == g for t, g in zip(texts, golds)]
    out = _summary(sum(hits), len(samples), 0, time.perf_counter() - t0, task)
    del out["parse_failures"]  # no parsing: an answer is right or wrong
    out["max_new_tokens"] = int(max_new_tokens)
    if return_details:
        out["details"] = [{"text": t, "gold": g, "correct": bool(h)} for t, g, h in zip(texts, golds, hits)]
    return out


def generate_texts(base_model, prompts: Sequence[str], lora: LoRA | None = None, *,
                   batch_size: int = GENERATION_BATCH,
                   max_new_tokens: int = 256, pad_to_multiple_of: int = 32, show_progress: bool = False,
                   desc: str = "generating", devices: int | None = None) -> list[str]:
    """Greedy completions of formatted prompts (KV cache), decoded and cut at end-of-sequence. Each batch is
    split over ``devices`` devices (default: as many as divide ``batch_size``)."""
    n = len(prompts)
    placer = BatchPlacer(batch_size, devices)
    lengths = [len(x) for x in base_model.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    texts: list[str | None] = [None] * n
    with _progress(n, show_progress, desc) as bar:
        for idx, real in _batches(np.argsort(lengths, kind="stable"), batch_size):
            ids, mask = base_model.encode([prompts[i] for i in idx], padding_side="left",
                                          pad_to_multiple_of=pad_to_multiple_of)
            new = placer.gather(base_model.generate(ids, mask, max_new_tokens, lora=_lora_rows(lora, idx, n),
                                                    placer=placer))
            for i, text in zip(idx[:real], base_model.decode(new)[:real]):
                texts[i] = text
            bar.update(real)
    return texts


def chat(base_model, messages: Sequence[str], lora: LoRA | None = None, *, system: str | None = None,
         max_new_tokens: int = 64) -> list[str]:
    """Greedy answers to user ``messages`` (each on its own, in the model's chat template), with ``lora`` or not."""
    prompts = [base_model.chat_prompt(m, system) for m in messages]
    return generate_texts(base_model, prompts, lora, max_new_tokens=max_new_tokens)


# --- the research notebook's entry points ------------------------------------------------------------------

def _check_tokenizer(base_model, tokenizer):
    if tokenizer is not None and tokenizer is not base_model.tokenizer:
        raise ValueError("tokenizer must be None or the model's own tokenizer (base_model.tokenizer): prompts "
                         "are formatted with the model's chat template")


def compute_base_accuracy(base_model, eval_samples: Sequence[Record], tokenizer=None, task_type="mcq",
                          max_samples: int | None = None, show_progress: bool = True, **kwargs) -> dict[str, Any]:
    """Accuracy of the base model alone. ``task_type`` may also be a `Task` or a task name;
    ``tokenizer`` is accepted for the notebook's signature (None or ``base_model.tokenizer``)."""
    _check_tokenizer(base_model, tokenizer)
    return compute_accuracy_with_lora(None, base_model, eval_samples, task_type, max_samples=max_samples,
                                      show_progress=show_progress, **kwargs)


class LoRAGeneratorFn(Protocol):
    """What `compute_accuracy_with_lora_batched` needs from a generator: a callable mapping tokenized
    condition prompts (``[num_prompts, seq]`` ids and mask) to a `LoRA` with batch shape ``()`` or
    ``(1,)`` (one adapter for the task), or ``(num_questions,)`` (one per evaluated question)."""

    def __call__(self, condition_ids, attention_mask) -> LoRA: ...


def compute_accuracy_with_lora_batched(generator: LoRAGeneratorFn | Callable[..., LoRA], functional_lora,
                                       condition_ids, attention_mask, eval_samples: Sequence[Record], tokenizer=None,
                                       task_type="mcq", max_samples: int | None = None, batch_size: int | None = None,
                                       show_progress: bool = True, **kwargs) -> dict[str, Any]:
    """Generate a LoRA from the condition prompts and score it. ``functional_lora`` is the
    `llgbm_jax.base.functional.FunctionalLoRA` (or directly the `BaseModel`) the LoRA is applied to."""
    base_model = getattr(functional_lora, "base_model", functional_lora)
    _check_tokenizer(base_model, tokenizer)
    lora = generator(condition_ids, attention_mask)
    if not isinstance(lora, LoRA):
        raise TypeError(f"generator must return a llgbm_jax.lora.LoRA, got {type(lora).__name__}")
    if lora.batch_shape == (1,):
        lora = jax.tree_util.tree_map(lambda x: x[0], lora)
    return compute_accuracy_with_lora(lora, base_model, eval_samples, task_type, max_samples=max_samples,
                                      batch_size=batch_size, show_progress=show_progress, **kwargs)
