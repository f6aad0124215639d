"""Accuracy evaluation: cached option scoring, GSM8K generation, per-row adapters, notebook entry points.

Reference: transformers' PyTorch model on the same weights. Tolerances (float32): tiny models, option
token log-probabilities 1e-5; SmolLM2-135M summed option log-likelihoods 1e-3 (the issue's bound) with
identical chosen options; GSM8K greedy text identical. Per-row adapters vs each row alone and zero
adapter vs base: 1e-4 (different batch shapes, different summation order).
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import torch

from llgbm_jax.base.model import load_base_model
from llgbm_jax.lora.adapter import LoRAConfig, init_lora, stack_loras, zeros_lora
from llgbm_jax.scoring import accuracy as ev
from llgbm_jax.scoring.stats import paired_gain
from llgbm_jax.tasks.registry import get_task

from conftest import DATA_DIR, torch_option_logliks

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# --- fast: tiny models -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_base_model(tiny_model[2])


def _torch_logprobs(model, seq: list[int]) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor([seq])).logits.float()
    return torch.log_softmax(out[0], -1).numpy()


@pytest.mark.parametrize("use_prefix", [False, True])
def test_option_token_logprobs_match_transformers(tiny_model, tiny, use_prefix):
    """Left-padded prompts of different lengths, options of 1-3 tokens (one question has fewer options),
    with and without a shared prefix cache: every option token's log-probability equals the full
    (uncached) forward of transformers."""
    _, torch_model, _ = tiny_model
    rng = np.random.RandomState(0)
    vocab = tiny.config.vocab_size
    prefix = rng.randint(3, vocab, 5).tolist() if use_prefix else []
    questions = [rng.randint(3, vocab, n).tolist() for n in (6, 2, 9)]
    options = [[rng.randint(3, vocab, n).tolist() for n in lens] for lens in ((1, 3, 2), (2, 2), (3, 1, 1))]
    b, k, t, width = 3, 3, 3, 12
    ids, mask = np.zeros((b, width), np.int32), np.zeros((b, width), np.int32)
    opt, om = np.zeros((b, k, t), np.int32), np.zeros((b, k, t), np.int32)
    for i, q in enumerate(questions):
        ids[i, width - len(q):], mask[i, width - len(q):] = q, 1
        for j, o in enumerate(options[i]):
            opt[i, j, :len(o)], om[i, j, :len(o)] = o, 1
    cache = ev.prefix_cache(tiny.params, tiny.config, np.asarray(prefix, np.int32)) if prefix else None
    lp = np.asarray(ev.option_token_logprobs(tiny.params, tiny.config, ids, mask, opt, om, None, cache))
    for i, q in enumerate(questions):
        for j, o in enumerate(options[i]):
            ref = _torch_logprobs(torch_model, prefix + q + o)
            start = len(prefix) + len(q)
            want = [ref[start - 1 + n, tok] for n, tok in enumerate(o)]
            np.testing.assert_allclose(lp[i, j, :len(o)], want, atol=1e-5, rtol=0)
            assert np.all(lp[i, j, len(o):] == 0)
    assert np.all(lp[1, 2] == 0)  # question 1 has two options


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """One tiny Llama for the family-independent checks."""
    from conftest import make_tiny_torch_model

    folder = tmp_path_factory.mktemp("tiny-llama-eval")
    make_tiny_torch_model("llama", seed=3).save_pretrained(folder)
    return load_base_model(str(folder))


def test_option_token_logprobs_per_row_lora(llama):
    """One adapter per row equals each row scored alone with its adapter; the adapters matter."""
    tiny = llama
    rng = np.random.RandomState(1)
    vocab, b = tiny.config.vocab_size, 3
    ids = rng.randint(3, vocab, (b, 8)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    opt = rng.randint(3, vocab, (b, 2, 2)).astype(np.int32)
    om = np.ones_like(opt)
    cfg = LoRAConfig(rank=2, alpha=4)
    loras = [init_lora(jax.random.PRNGKey(i), tiny.config, cfg, random_b=True, b_std=0.3) for i in range(b)]
    rows = np.asarray(ev.option_token_logprobs(tiny.params, tiny.config, ids, mask, opt, om, stack_loras(loras)))
    for i in range(b):
        alone = ev.option_token_logprobs(tiny.params, tiny.config, ids[i:i + 1], mask[i:i + 1], opt[i:i + 1],
                                         om[i:i + 1], loras[i])
        np.testing.assert_allclose(rows[i], np.asarray(alone)[0], atol=1e-5, rtol=0)
    base = np.asarray(ev.option_token_logprobs(tiny.params, tiny.config, ids, mask, opt, om))
    assert np.abs(rows - base).max() > 1e-2


class _MergingTokenizer:
    """Characters as tokens, except that "x[" is one token: a BPE merge across the answer boundary."""

    def __call__(self, texts, add_special_tokens=False):
        out = []
        for text in texts:
            ids, i = [], 0
            while i < len(text):
                if text.startswith("x[", i):
                    ids.append(1000)
                    i += 2
                else:
                    ids.append(ord(text[i]))
                    i += 1
            out.append(ids)
        return {"input_ids": out}


def test_split_answer_tokens_boundary():
    tok = _MergingTokenizer()
    pre, opts, clean = ev.split_answer_tokens(tok, "ab", ["[A]", "[B]"])
    assert clean and pre == [97, 98] and opts == [[91, 65, 93], [91, 66, 93]]
    pre, opts, clean = ev.split_answer_tokens(tok, "abx", ["[A]", "[B]"])
    # The merge moves the boundary back: both options are scored from the same shorter context.
    assert not clean and pre == [97, 98] and opts == [[1000, 65, 93], [1000, 66, 93]]


def test_wilson_interval():
    # Reference values (Wilson 1927; e.g. Newcombe 1998, Table I): 0/10 -> (0, 0.2775), 5/10 -> (0.2366, 0.7634).
    lo, hi = ev.wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = ev.wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert ev.wilson_interval(0, 0) == (0.0, 1.0)


def test_paired_gain():
    base = [1, 0, 0, 1, 0, 1, 0, 0]
    new = [1, 1, 1, 1, 0, 0, 1, 0]
    g = paired_gain(base, new)
    d = np.array(new) - np.array(base)  # +1 three times, -1 once
    assert g["gain"] == pytest.approx(2 / 8) and g["n"] == 8
    assert g["se"] == pytest.approx(np.sqrt(np.sum((d - 0.25) ** 2) / 7 / 8))
    assert g["gain_in_se"] == pytest.approx(0.25 / g["se"])
    assert (g["only_new_correct"], g["only_base_correct"]) == (3, 1)
    assert paired_gain([1, 0], [1, 0])["gain_in_se"] == 0.0  # no differences: no evidence
    with pytest.raises(ValueError, match="equally long"):
        paired_gain([1, 0], [1])


# --- slow: SmolLM2-135M-Instruct against transformers ------------------------------------------------------

def _examples(name: str, n: int = 12) -> list[dict]:
    records = get_task(name).load("eval", DATA_DIR)
    if name not in ("arc_e", "arc_e_cloze"):
        return records[:n]
    # ARC-e: the first 8, plus questions labelled 1-4, one with an option E, and one with only three options
    # (the cloze form has the same questions in the same order).
    opts = [get_task("arc_e").options(r) for r in get_task("arc_e").load("eval", DATA_DIR)]
    special = ([i for i, o in enumerate(opts) if o[0] == "[1]"][:2] + [i for i, o in enumerate(opts) if "[E]" in o][:1]
               + [i for i, o in enumerate(opts) if len(o) == 3][:1])
    return records[:n - len(special)] + [records[i] for i in special]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["arc_e", "boolq", "obqa", "arc_e_cloze", "obqa_cloze"])
def test_option_loglik_matches_transformers(smollm2, smollm2_torch, name):
    """Letter, yes/no and cloze scoring (answer texts of several tokens, no system message: the
    template's own) against transformers' full forwards of prompt + answer."""
    model, tok = smollm2_torch
    task = get_task(name)
    records = _examples(name)
    res = ev.compute_accuracy_with_lora(None, smollm2, records, task, batch_size=10, show_progress=False,
                                        return_details=True)
    assert res["total"] == 12 and res["parse_failures"] == 0 and res["boundary_merges"] == 0
    for r, d in zip(records, res["details"]):
        msgs = ([{"role": "system", "content": r["system"]}] if "system" in r else []) + [
            {"role": "user", "content": r["prompt"]}]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert prompt == task.format_prompt(r, smollm2)
        ref = torch_option_logliks(model, tok, prompt, d["options"])
        np.testing.assert_allclose(d["logprobs"], ref, atol=1e-3, rtol=0)
        assert d["pred"] == d["options"][int(np.argmax(ref))]
        lengths = np.array([len(o) for o in d["options"]])
        assert d["pred_norm"] == d["options"][int(np.argmax(np.array(ref) / lengths))]
    assert res["correct"] == sum(d["pred"] == d["gold"] for d in res["details"])


@pytest.mark.slow
def test_gsm8k_generation_matches_transformers(smollm2, smollm2_torch):
    """5 evaluation problems, batched with left padding; 64 new tokens here (256 in real runs) to keep
    the test near a minute: a longer budget only extends the same greedy loop."""
    model, tok = smollm2_torch
    task = get_task("gsm8k")
    records = task.load("eval", DATA_DIR)[:5]
    res = ev.compute_accuracy_with_lora(None, smollm2, records, task, batch_size=5, max_new_tokens=64,
                                        show_progress=False, return_details=True)
    for r, d in zip(records, res["details"]):
        ids = tok(task.format_prompt(r, smollm2), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                                 eos_token_id=smollm2.eos_token_ids[0], pad_token_id=smollm2.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        new = new[:new.index(smollm2.eos_token_ids[0])] if smollm2.eos_token_ids[0] in new else new
        assert d["text"] == tok.decode(new, skip_special_tokens=True)
        assert d["pred"] == task.parse(d["text"], r)
    assert res["parse_failures"] == sum(d["pred"] is None for d in res["details"])
    assert res["correct"] == sum(d["correct"] for d in res["details"])


@pytest.fixture(scope="module")
def arc6():
    return _examples("arc_e")[:6]


def _random_lora(model, seed: int):
    return init_lora(jax.random.PRNGKey(seed), model.config, LoRAConfig(rank=4, alpha=8), random_b=True, b_std=0.02)


@pytest.mark.slow
def test_per_row_lora_equals_each_row_alone(smollm2, arc6):
    loras = [_random_lora(smollm2, i) for i in range(len(arc6))]
    kw = dict(show_progress=False, return_details=True)
    rows = ev.compute_accuracy_with_lora(stack_loras(loras), smollm2, arc6, "arc_e", batch_size=4, **kw)
    base = ev.compute_accuracy_with_lora(None, smollm2, arc6, "arc_e", batch_size=4, **kw)
    for i, (rec, lora) in enumerate(zip(arc6, loras)):
        alone = ev.compute_accuracy_with_lora(lora, smollm2, [rec], "arc_e", batch_size=1, **kw)["details"][0]
        np.testing.assert_allclose(rows["details"][i]["logprobs"], alone["logprobs"], atol=1e-4, rtol=0)
        assert rows["details"][i]["pred"] == alone["pred"]
    change = max(np.abs(np.subtract(r["logprobs"], b["logprobs"])).max()
                 for r, b in zip(rows["details"], base["details"]))
    assert change > 1e-2  # the adapters change the scores, so the comparison above has teeth
    with pytest.raises(ValueError, match=r"expected \(\) for one adapter or \(6,\)"):
        ev.compute_accuracy_with_lora(stack_loras(loras[:2]), smollm2, arc6, "arc_e", **kw)


@pytest.mark.slow
def test_zero_lora_and_stand_in_generator(smollm2, arc6):
    """A zero LoRA gives the base model's scores; the notebook entry points agree with the core."""
    from llgbm_jax import FunctionalLoRA

    kw = dict(show_progress=False)
    base = ev.compute_base_accuracy(smollm2, arc6, smollm2.tokenizer, "arc_e", None, False, return_details=True)
    zero = ev.compute_accuracy_with_lora(zeros_lora(smollm2.config, LoRAConfig(4, 8)), smollm2, arc6, "arc_e",
                                         return_details=True, **kw)
    for b, z in zip(base["details"], zero["details"]):
        np.testing.assert_allclose(b["logprobs"], z["logprobs"], atol=1e-4, rtol=0)
    assert (base["accuracy"], base["correct"], base["total"]) == (zero["accuracy"], zero["correct"], zero["total"])

    lora = _random_lora(smollm2, 7)
    calls = []

    def generator(condition_ids, attention_mask):  # stand-in: one fixed adapter, batch axis of 1
        calls.append((condition_ids.shape, attention_mask.shape))
        return stack_loras([lora])

    cond_ids, cond_mask = smollm2.encode(["Which gas do plants absorb?", "What is the boiling point of water?"])
    got = ev.compute_accuracy_with_lora_batched(generator, FunctionalLoRA(smollm2, 4, 8), cond_ids, cond_mask, arc6,
                                                None, "mcq", 5, 4, False)
    want = ev.compute_accuracy_with_lora(lora, smollm2, arc6, "mcq", max_samples=5, batch_size=4, **kw)
    assert calls == [(cond_ids.shape, cond_mask.shape)]
    assert {k: got[k] for k in ("accuracy", "correct", "total", "parse_failures")} == \
        {k: want[k] for k in ("accuracy", "correct", "total", "parse_failures")} and got["total"] == 5
    assert math.isclose(got["accuracy"], got["correct"] / 5)
    with pytest.raises(ValueError, match="model's own tokenizer"):
        ev.compute_base_accuracy(smollm2, arc6, object(), "arc_e", 2, False)


def test_score_many_decodes_adapters_side_by_side(tiny_smollm2_vocab, monkeypatch):
    """`comparison.score_many` on a generation task (several adapters' answers in the same decoding batches)
    gives each adapter exactly the text it generates alone; on other tasks it is `score` per adapter."""
    from llgbm_jax.evaluation import comparison

    _, model = tiny_smollm2_vocab
    loras = [init_lora(jax.random.PRNGKey(s), model.config, LoRAConfig(rank=4, alpha=8), random_b=True, b_std=0.5)
             for s in (1, 2, 3)]
    texts, real = [], ev.compute_accuracy_with_lora

    def spy(*args, **kw):  # the generated texts of every scoring call (`score` keeps only the verdicts)
        out = real(*args, **kw)
        texts.append([d.get("text") for d in out["details"]])
        return out

    monkeypatch.setattr(ev, "compute_accuracy_with_lora", spy)
    task = get_task("gsm8k")
    records = task.load("eval", DATA_DIR)[:7]  # 7 questions x 3 adapters: batches of 5 and 2 questions
    together = comparison.score_many(model, task, records, loras)
    assert len(texts) == 2  # two decoding calls for the three adapters
    side_by_side = [sum((call[j * n:(j + 1) * n] for call, n in zip(texts, (5, 2))), []) for j in range(3)]
    texts.clear()
    alone = [comparison.score(model, task, records, lora) for lora in loras]
    assert together == alone and side_by_side == texts
    assert len({tuple(t) for t in texts}) == 3  # the adapters write different texts: the check has teeth

    task = get_task("arc_e")
    records = task.load("eval", DATA_DIR)[:5]
    assert comparison.score_many(model, task, records, loras) == [comparison.score(model, task, records, l)
                                                                 for l in loras]


def test_score_cache_reads_only_intact_entries_of_their_own_key(tmp_path):
    """A truncated score entry and an entry under another key's name are not read (a warning names the file)."""
    import re

    from llgbm_jax.evaluation.comparison import ScoreCache
    from llgbm_jax.utils.io import CacheWarning

    cache = ScoreCache(str(tmp_path))
    key_a = {"model": "m", "task": "t", "questions": "q", "adapter": ["a"]}
    key_b = dict(key_a, adapter=["b"])
    result = [{"correct": True, "pred": "x", "gold": "x"}, {"correct": False, "pred": "y", "gold": "x"}]
    assert cache.get(key_a) is None
    cache.put(key_a, result)
    assert cache.get(key_a) == result and cache.path(key_a) != cache.path(key_b)
    entry = open(cache.path(key_a)).read()
    with open(cache.path(key_a), "w") as f:
        f.write(entry[:len(entry) // 2])
    with pytest.warns(CacheWarning, match=re.escape(cache.path(key_a))):
        assert cache.get(key_a) is None
    with open(cache.path(key_b), "w") as f:
        f.write(entry)
    with pytest.warns(CacheWarning, match="stored key is another entry's"):
        assert cache.get(key_b) is None
    cache.put(key_b, result[:1])  # recomputed and written again
    assert cache.get(key_b) == result[:1]


def test_options_that_start_one_another_are_scored_as_whole_replies(tiny_smollm2_vocab):
    """Summed log-probabilities alone can never rank "cam cam cam" above "cam cam" (its prefix). Such a question's
    options are scored with the end-of-turn token appended (whole replies, as teachers are trained), equal to
    transformers on the same weights; questions whose options do not start one another are scored as before."""
    from llgbm_jax.evaluation.reference import torch_option_scores
    from llgbm_jax.scoring.accuracy import has_prefix_option, option_scoring_key
    from llgbm_jax.tasks.formats import end_of_turn_id

    torch_model, model = tiny_smollm2_vocab
    eot = end_of_turn_id(model)
    for name, nested in (("fam_repeat_3", True), ("fam_reverse_words", False)):
        task = get_task(name)
        records = task.load("eval")[:4]
        prompts = [task.format_prompt(r, model) for r in records]
        options = [task.options(r) for r in records]
        assert all(has_prefix_option(o) == nested for o in options)
        assert option_scoring_key(task, records) == ({"whole_replies": True} if nested else {})
        mine, _ = ev.score_options(model, prompts, options)
        whole = torch_option_scores(torch_model, model.tokenizer, prompts, options, end_of_turn=eot)
        summed = torch_option_scores(torch_model, model.tokenizer, prompts, options)
        np.testing.assert_allclose(np.concatenate(mine), np.concatenate(whole), atol=1e-4, rtol=0)
        if not nested:
            np.testing.assert_array_equal(np.concatenate(whole), np.concatenate(summed))
            continue
        for opts, s in zip(options, summed):  # without the end token a prefix always wins
            for i, a in enumerate(opts):
                for j, b in enumerate(opts):
                    if len(a) < len(b) and b.startswith(a):
                        assert s[i] >= s[j]
        assert np.abs(np.concatenate(whole) - np.concatenate(summed)).min() > 1e-3  # every option changed
