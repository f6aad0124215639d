"""The generated task family (`llgbm_jax.tasks.family`): determinism, disjoint train/test pools, options,
the word list, prompts and cloze tokenization on SmolLM2, and exact-match scoring."""

from __future__ import annotations

import re

import numpy as np
import pytest

from llgbm_jax import tasks, teachers
from llgbm_jax.scoring import accuracy as evaluation
from llgbm_jax.tasks import family as task_family
from llgbm_jax.tasks.family import KINDS, family_task, family_task_names, make_records

NAMES = family_task_names()


def test_registered_family_names_and_kinds():
    assert len(NAMES) >= 120 and len(set(NAMES)) == len(NAMES) and len(KINDS) >= 12
    assert all(re.fullmatch(r"fam_[a-z_]+(_\d+)?", n) for n in NAMES)
    for name in NAMES:
        task = tasks.get_task(name)
        assert isinstance(task, task_family.FamilyTask) and task.task_type == "cloze" and task.exact_match
        assert task.name in family_task_names(task_family.kind_of(name))
    assert sum(len(family_task_names(k)) for k in KINDS) == len(NAMES)
    assert {"fam_reverse_words", "fam_sort_words", "fam_add_7", "fam_rotate_2", "fam_uppercase"} <= set(NAMES)
    assert KINDS["add"].params == tuple(range(1, 21)) and KINDS["nth_word"].params == tuple(range(1, 9))
    assert KINDS["rotate"].params == tuple(range(1, 8)) and KINDS["letters"].params == ()
    assert len({k.source for k in KINDS.values()}) >= 3
    for name in NAMES:  # at least four distinct one-line descriptions, none of them the prompt's instruction
        texts = task_family.descriptions(name)
        instruction = task_family.make_records(name, "eval", 1)[0]["prompt"].split(":")[0]
        assert len(set(texts)) == len(texts) >= 4 and instruction not in texts
        assert all(t.strip() == t and "\n" not in t and t.endswith((".", "?")) and len(t) < 100 for t in texts)
    with pytest.raises(KeyError, match="not a task of the family"):
        family_task("fam_nonsense")
    with pytest.raises(KeyError, match="unknown task family kind"):
        family_task_names("nonsense")
    with pytest.raises(ValueError, match="generated in memory"):
        tasks.get_task("fam_add_7").split_file("train")


def test_same_seed_same_records_other_seed_other_records():
    for name in ("fam_reverse_words", "fam_add_7", "fam_digit_sum"):
        a = family_task(name, seed=3).load("train")
        task_family._inputs.cache_clear()  # regenerate, not just read the memo
        assert family_task(name, seed=3).load("train") == a
        assert len(a) == task_family.DEFAULT_SIZES["train"]
        other = family_task(name, seed=4).load("train")
        assert sum(x["input"] == y["input"] for x, y in zip(a, other)) < 0.05 * len(a)
    assert tasks.get_task("fam_add_7").load("eval") == family_task("fam_add_7", seed=0).load("eval")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_test_input_or_item_in_train(kind):
    name = family_task_names(kind)[0]
    task = tasks.get_task(name)
    train, ev = task.load("train"), task.load("eval")
    assert len(ev) == task_family.DEFAULT_SIZES["eval"]
    assert len({r["input"] for r in ev}) == len(ev) and len({r["input"] for r in train}) == len(train)
    assert not {r["input"] for r in ev} & {r["input"] for r in train}
    # Stronger: no word or number of a test input occurs in any train input.
    items = lambda rs: {w for r in rs for w in r["input"].split()}
    assert not items(ev) & items(train)
    assert all(task_family.in_test_pool(w) for w in items(ev))
    # The project's leakage rule (question and option set) holds too.
    assert task_family.leaked_records(task) == []
    assert not {tasks.question_key(r) for r in ev} & {tasks.question_key(r) for r in train}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gold_among_distinct_options_shared_by_the_kind(kind):
    """Options hold the gold exactly once among distinct outputs of the kind's tasks on the same input: all of
    them for a small kind (the same options for every task), the gold and ``MAX_OPTIONS - 1`` others for a large
    one (most shared between tasks), where the gold's position is spread over the positions."""
    names = family_task_names(kind)
    k = KINDS[kind]
    by_task = {n: make_records(n, "eval", 300) + make_records(n, "train", 300) for n in names}
    first = by_task[names[0]]
    large = len(names) > task_family.MAX_OPTIONS
    for name, records in by_task.items():
        task = tasks.get_task(name)
        positions = []
        for i, (r, r0) in enumerate(zip(records, first)):
            opts = task.options(r)
            assert task.answer(r) == r["response"] and opts.count(r["response"]) == 1
            assert len(opts) >= 2 and len(set(opts)) == len(opts)
            assert r["input"] == r0["input"] and r["prompt"].endswith(": " + r["input"])
            if large:
                x = r["input"].split() if k.source == "words" else int(r["input"])
                assert len(opts) == task_family.MAX_OPTIONS and set(opts) <= {t.fn(x) for t in k.transforms}
                assert len(set(opts) & set(r0["options"])) >= task_family.MAX_OPTIONS - 2
                positions.append(opts.index(r["response"]))
            else:
                assert r["options"] == r0["options"]  # same input, same options
        if large:  # each position holds the gold for 10-30% of the records
            share = np.bincount(positions, minlength=task_family.MAX_OPTIONS) / len(positions)
            assert share.min() > 0.1 and share.max() < 0.3, (name, share)
    # Tasks of a kind answer differently on every input: they are mutually exclusive.
    assert all(len({by_task[n][i]["response"] for n in names}) == len(names) for i in range(len(first)))


def test_transforms_on_a_known_input():
    ws, out = ("pear", "apple", "fig", "kiwi", "lime", "plum", "date", "yuzu"), {}
    for kind in KINDS.values():
        x = ws[:kind.size] if kind.source == "words" else 4827
        out.update({t.name: t.fn(x) for t in kind.transforms})
    assert out["reverse_words"] == "kiwi fig apple pear" and out["sort_words"] == "apple fig kiwi pear"
    assert out["sort_words_desc"] == "pear kiwi fig apple" and out["swap_first_last"] == "kiwi apple fig pear"
    assert out["rotate_2"] == "fig kiwi lime plum date yuzu pear apple" and out["word_4"] == "kiwi"
    assert out["word_8"] == "yuzu" and out["first_3"] == "pear apple fig" and out["last_2"] == "date yuzu"
    assert out["uppercase"] == "PEAR APPLE FIG" and out["capitalize"] == "Pear Apple Fig"
    assert out["reverse_letters"] == "raep elppa gif" and out["first_letters"] == "paf" and out["last_letters"] == "reg"
    assert out["snake_case"] == "pear_apple_fig" and out["camel_case"] == "pearAppleFig"
    assert out["kebab_case"] == "pear-apple-fig" and out["comma_list"] == "pear, apple, fig"
    assert out["add_7"] == "4834" and out["multiply_10"] == "48270" and out["multiply_3"] == "14481"
    assert out["subtract_20"] == "4807" and out["add_20"] == "4847"
    assert out["caesar_1"] == "qfbs" and out["caesar_13"] == "crne" and out["repeat_3"] == "pear pear pear"
    assert out["digit_sum"] == "21" and out["reverse_digits"] == "7284" and out["sort_digits"] == "2478"
    assert out["max_digit"] == "8"


def test_words_are_whole_lowercase_tokens_of_smollm2(smollm2):
    assert task_family.derive_words(["Ġthe", "the", "ĠThe", "Ġab", "Ġabc", "Ġabc", "Ġa1b", "Ġcamel", "Ġtoolongword"],
                                    (3, 8)) == ("the", "abc", "camel")
    words = task_family.vocabulary_words()
    assert len(words) > 10000 and all(re.fullmatch(r"[a-z]{3,8}", w) for w in words)
    ids = smollm2.tokenizer([" " + w for w in words[::50]], add_special_tokens=False)["input_ids"]
    assert all(len(x) == 1 for x in ids)  # each word is one token after a space
    test_share = sum(map(task_family.in_test_pool, words)) / len(words)
    assert 0.2 < test_share < 0.3


def test_prompts_sft_and_cloze_tokenization_on_smollm2(smollm2):
    """Records work unchanged with the chat prompt, SFT encoding and cloze scoring's joint tokenization:
    no option merges with the prompt's last token, and the SFT targets are the response."""
    tok = smollm2.tokenizer
    for name in NAMES:
        task = tasks.get_task(name)
        records = task.load("eval")[:20]
        for r in records:
            prompt = task.format_prompt(r, smollm2)
            assert prompt.endswith("<|im_start|>assistant\n") and r["prompt"] in prompt
            _, opt_tokens, clean = evaluation.split_answer_tokens(tok, prompt, task.options(r))
            assert clean, (name, r)
            assert [tok.decode(t) for t in opt_tokens] == list(task.options(r))
            e = teachers.encode_sft(smollm2, task, r, 320)
            assert tok.decode(e.ids[e.num_prompt:]) == r["response"] + "<|im_end|>"


def test_exact_match_strips_whitespace_and_is_case_sensitive(smollm2, monkeypatch):
    task = tasks.get_task("fam_capitalize")
    records = task.load("eval")[:4]
    texts = [f"  {records[0]['response']}\n", records[1]["response"].lower(), records[2]["response"] + " and more",
             records[3]["response"]]
    seen = {}

    def fake_generate(base_model, prompts, lora=None, **kw):
        seen.update(kw, prompts=list(prompts))
        return texts

    monkeypatch.setattr(evaluation, "generate_texts", fake_generate)
    res = evaluation.exact_match_accuracy(None, smollm2, records, task, return_details=True, show_progress=False)
    assert [d["correct"] for d in res["details"]] == [True, False, False, True]
    assert res["correct"] == 2 and res["total"] == 4 and res["accuracy"] == 0.5
    longest = max(len(smollm2.tokenizer(r["response"])["input_ids"]) for r in records)
    assert seen["max_new_tokens"] == res["max_new_tokens"] == -(-(longest + 2) // 8) * 8 >= longest + 2
    assert seen["prompts"] == [task.format_prompt(r, smollm2) for r in records]


def test_experiment_trains_scores_and_reports_the_mean_of_teachers(tiny_smollm2_vocab, tmp_path, monkeypatch):
    """`llgbm-jax family` (`family_study`) end to end on a tiny model: teachers through `build_zoo` (cloze and exact
    match for base and teacher), the mean of the final teachers as one LoRA scored on every task, the
    table; a second call trains and scores nothing."""
    _, tiny = tiny_smollm2_vocab
    import dataclasses
    import json
    import os

    import numpy as np

    from llgbm_jax.lora.ops import mean_lora
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.teachers.family_study import family_study, family_zoo_config, format_table

    names = ["fam_word_1", "fam_word_2"]
    cfg = family_zoo_config(tasks=names, steps=4, save_every=1, adapters_per_run=2, eval_samples=5)
    run = lambda: family_study(str(tmp_path / "zoo"), cfg, out=str(tmp_path / "table.json"), base_model=tiny,
                               show_progress=False)
    result = run()
    rows = result["rows"]
    assert [r["task"] for r in rows] == names and all(r["n"] == 5 and r["chance"] == 0.2 for r in rows)
    assert result["mean_of_teachers_rank"] == 2 * 8
    with open(tmp_path / "table.json") as f:
        assert json.load(f)["rows"] == rows
    zoo = str(tmp_path / "zoo")
    manifest = json.load(open(os.path.join(zoo, "manifest.json")))
    for r, s in zip(rows, manifest["summary"]):
        assert (r["base"], r["teacher"]) == (s["base"], s["teacher"])
        em = json.load(open(os.path.join(zoo, r["task"], "run0", "step_00004", "test_details_exact_match.json")))
        assert len(em) == 5 and r["teacher_exact_match"] == np.mean([d["correct"] for d in em])
    # The cached mean-of-teachers scores are those of mean_lora of the two final adapters.
    from llgbm_jax.scoring.accuracy import compute_accuracy_with_lora

    finals = [load_peft_adapter(os.path.join(zoo, n, "run0", "step_00004")) for n in names]
    cache = json.load(open(os.path.join(zoo, "mean_of_teachers.json")))
    task = tasks.get_task(names[1])
    again = compute_accuracy_with_lora(mean_lora(finals), tiny, task.load("eval")[:5], task,
                                       return_details=True, show_progress=False)
    assert [d["correct"] for d in again["details"]] == cache["tasks"][names[1]]["cloze_hits"]
    assert "fam_word_2" in format_table(rows).splitlines()[2]

    def refuse(*a, **k):
        raise AssertionError("a finished experiment was trained or scored again")

    monkeypatch.setattr("llgbm_jax.teachers.zoo.train_run", refuse)
    monkeypatch.setattr("llgbm_jax.scoring.accuracy.compute_accuracy_with_lora", refuse)
    monkeypatch.setattr("llgbm_jax.scoring.accuracy.exact_match_accuracy", refuse)
    assert run()["rows"] == rows

    # exact_match=False (the cpu preset): the same zoo is scored again by cloze only (other scores, other key)
    monkeypatch.setattr("llgbm_jax.scoring.accuracy.compute_accuracy_with_lora", compute_accuracy_with_lora)
    cloze_only = dataclasses.replace(cfg, exact_match=False)
    summary = teachers.build_zoo(zoo, cloze_only, base_model=tiny, show_progress=False)["summary"]
    assert [(s["base"], s["teacher"]) for s in summary] == [(r["base"], r["teacher"]) for r in rows]
    assert not any("teacher_exact_match" in s for s in summary)
