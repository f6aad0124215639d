"""Task registry, splits, options and answer parsing (real data files + adversarial strings)."""

from __future__ import annotations

import json
import os
import re

import pytest

from llgbm_jax import tasks
from llgbm_jax.tasks import formats
from llgbm_jax.tasks.formats import extract_bool_answer, extract_gsm8k_answer, extract_mcq_answer
from llgbm_jax.tasks.registry import get_task

from conftest import DATA_DIR

REGISTERED = ("arc_e", "boolq", "obqa", "gsm8k", "arc_e_cloze", "obqa_cloze")


def _raw(name):
    with open(os.path.join(DATA_DIR, name)) as f:
        return json.load(f)


def test_registry_types_and_files():
    assert {n: get_task(n).task_type for n in REGISTERED} == {
        "arc_e": "mcq", "boolq": "bool", "obqa": "mcq", "gsm8k": "gsm8k", "arc_e_cloze": "cloze", "obqa_cloze": "cloze"}
    assert tasks.resolve_task("mcq").task_type == "mcq"
    with pytest.raises(ValueError, match="neither a task type"):
        tasks.resolve_task("nonsense")
    with pytest.raises(KeyError, match="unknown task 'nonsense'"):
        get_task("nonsense", DATA_DIR)


def test_data_dir_setting_and_missing_file_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LLGBM_DATA_DIR", DATA_DIR)
    assert len(get_task("obqa").load("eval")) == 500  # read through the environment variable
    monkeypatch.setenv("LLGBM_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "OBQA_test.json"))):
        get_task("obqa").load("eval")
    (tmp_path / "bad.json").write_text('[{"prompt": "x"}]')
    with pytest.raises(ValueError, match="bad.json: record 0 needs string fields"):
        tasks.load_records(str(tmp_path / "bad.json"))


def test_gsm8k_split_ranges_disjoint():
    raw = _raw("GSM8K.json")
    task = get_task("gsm8k")
    train, ev = task.load("train", DATA_DIR), task.load("eval", DATA_DIR)
    # One file split by index; the question-text check applies here too (it removes none of these).
    held_out = {_question(e) for e in ev}
    assert ev == raw[1000:1319] and train == [r for r in raw[:1000] if _question(r) not in held_out]
    with pytest.raises(ValueError, match="overlaps"):
        tasks.Task("x", "gsm8k", "GSM8K.json", None, train_range=(0, 1000), eval_range=(999, 1319))


def _question(record) -> str:
    """The leakage rule, written independently of `tasks.question_key`: the prompt without option lines
    ("A: ..", "1: ..") and "Please answer the question .." lines, lower-cased, punctuation and
    whitespace runs made single spaces."""
    lines = [line for line in record["prompt"].splitlines() if not re.match(r"\s*([A-Z]|[1-9])\s*:\s", line)
             and not line.lower().startswith("please answer the question")]
    return " ".join("".join(c if c.isalnum() or c == "_" else " " for c in " ".join(lines).lower()).split())


# Training records the question-text rule removes from the public splits (a few questions of the
# test files recur in the train files, often with other or shuffled options).
LEAKED = {"arc_e": 8, "arc_e_cloze": 8, "boolq": 0, "obqa": 6, "obqa_cloze": 6, "gsm8k": 0}


@pytest.mark.parametrize("name", ["arc_e", "boolq", "obqa", "obqa_cloze"])
def test_test_files_never_used_as_train(name):
    task = get_task(name)
    assert "test" not in task.split_file("train").lower() and "test" in task.split_file("eval").lower()
    train, ev = task.load("train", DATA_DIR), task.load("eval", DATA_DIR)
    raw_train, raw_eval = _raw(task.train_file), _raw(task.eval_file)
    # Training records are the train file minus every record whose question is a test question,
    # whatever its options; never a test record.
    held_out = {_question(r) for r in raw_eval}
    expected = [r for r in raw_train if _question(r) not in held_out]
    if task.task_type == "cloze":
        expected, raw_eval = ([tasks.mcq_to_cloze(r) for r in rs] for rs in (expected, raw_eval))
    assert train == expected and ev == raw_eval
    assert len(raw_train) - len(train) == LEAKED[name] == tasks.leakage_report(DATA_DIR, [name])[name]["removed"]


def test_leakage_report_counts():
    report = tasks.leakage_report(DATA_DIR)
    assert {n: r["removed"] for n, r in report.items() if n in LEAKED} == LEAKED
    assert all(r["kept"] == r["train_records"] - r["removed"] for r in report.values())


def test_strict_leakage_rule_ignores_options_case_and_punctuation(tmp_path):
    """A training record whose question is an evaluation question is dropped whatever its options, case,
    whitespace or punctuation, also in a one-file task split by index (GSM8K's layout)."""
    mcq = lambda q, opts, a="[A]": {"prompt": q + "".join(f"\n{l}: {o}" for l, o in zip("ABCD", opts)),
                                    "response": a, "system": "s"}
    test = [mcq("Which gas do plants absorb?", ["oxygen", "carbon dioxide"], "[B]")]
    train = [mcq("which gas do  plants absorb", ["nitrogen", "helium", "argon"]),  # other options
             mcq("Which gas do plants absorb?\nPlease answer the question choosing from A/B.",
                 ["oxygen", "carbon dioxide"]),
             mcq("Which gas do animals absorb?", ["oxygen", "carbon dioxide"])]
    (tmp_path / "toy_train.json").write_text(json.dumps(train))
    (tmp_path / "toy_test.json").write_text(json.dumps(test))
    assert get_task("toy", str(tmp_path)).load("train", str(tmp_path)) == train[2:]
    sums = [{"prompt": q, "response": f"... #### {i}"} for i, q in enumerate(
        ["Tom has 3 apples. How many?", "tom has 3 apples; how many", "Ann has 2 pears. How many?"])]
    (tmp_path / "one.json").write_text(json.dumps(sums))
    one = tasks.Task("one", "gsm8k", "one.json", None, train_range=(0, 2), eval_range=(2, 3))
    assert one.load("train", str(tmp_path)) == sums[:2]
    one = tasks.Task("one", "gsm8k", "one.json", None, train_range=(1, 3), eval_range=(0, 1))
    assert one.load("train", str(tmp_path)) == sums[2:]


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_record_has_valid_gold_and_options(name, split):
    task = get_task(name)
    records = task.load(split, DATA_DIR)
    golds = [task.answer(r) for r in records]
    if task.task_type == "gsm8k":
        # The gold is the number after '####' in every reference solution.
        assert golds == [float(r["response"].split("####")[-1].strip().replace(",", "")) for r in records]
    else:
        assert all(g in task.options(r) for g, r in zip(golds, records))
        assert all(task.parse(r["response"], r) == g for g, r in zip(golds, records))


def test_arc_option_labels_as_written():
    records = get_task("arc_e").load("eval", DATA_DIR)
    label_sets = {tuple(o[1:-1] for o in get_task("arc_e").options(r)) for r in records}
    assert {("A", "B", "C", "D"), ("1", "2", "3", "4"), ("A", "B", "C", "D", "E"), ("A", "B", "C")} <= label_sets
    odd = [r for r in get_task("obqa").load("eval", DATA_DIR) if "Conservation\n" in r["prompt"]][0]
    assert get_task("obqa").options(odd) == ("[B]", "[C]", "[D]")  # option A's line is missing in the file
    with pytest.raises(ValueError, match="not among the prompt's options"):
        tasks.gold_answer({"prompt": "Q?\nA: x\nB: y", "response": "[C]"}, "mcq")


@pytest.mark.parametrize("name", ["arc_e", "obqa"])
def test_cloze_form_of_mcq_records(name):
    """Same questions and answers as the letter form; only the option lines and the instruction go."""
    letters, cloze = get_task(name).load("eval", DATA_DIR), get_task(f"{name}_cloze").load("eval", DATA_DIR)
    assert len(letters) == len(cloze)
    for mcq, c in zip(letters, cloze):
        choices = dict(formats.mcq_choices(mcq["prompt"]))
        assert c["options"] == list(choices.values()) and c["response"] == choices[mcq["response"].strip()[1:-1]]
        assert not formats.mcq_labels(c["prompt"]) and "please answer" not in c["prompt"].lower()
        assert c["prompt"] in mcq["prompt"] and "system" not in c
    with pytest.raises(ValueError, match="cloze record needs 'options'"):
        tasks.answer_options({"prompt": "Q?", "response": "x", "options": ["x"]}, "cloze")
    with pytest.raises(ValueError, match="not among the record's options"):
        tasks.gold_answer({"prompt": "Q?", "response": "z", "options": ["x", "y"]}, "cloze")


@pytest.mark.parametrize("text,expected", [
    ("the Moon", "the Moon"),
    ("The moon.", "the Moon"),
    ("the Moon orbits the Earth", "the Moon"),  # starts with an option
    ("the moons", None),  # an option's words must end where a word ends
    ("It is the Sun, of course.", "the Sun"),  # contains exactly one option
    ("the Sun or the Moon", "the Sun"),
    ("Mars", None),
    ("", None),
])
def test_extract_cloze_answer(text, expected):
    assert tasks.extract_cloze_answer(text, ["the Moon", "the Sun", "the Moon and the Sun"]) == expected


def test_majority_baseline():
    label, frac = get_task("boolq").majority_baseline(get_task("boolq").load("eval", DATA_DIR))
    assert label == "[True]" and frac == pytest.approx(2033 / 3270)


def test_further_file_pair_inferred(tmp_path):
    rec = lambda q, a: {"prompt": f"{q}\n1: yes\n2: no", "response": f"[{a}]", "system": "s"}
    (tmp_path / "mine_train.json").write_text(json.dumps([rec("q1", 1), rec("q2", 2)]))
    (tmp_path / "mine_test.json").write_text(json.dumps([rec("q3", 2)]))
    task = get_task("mine", str(tmp_path))
    assert task.task_type == "mcq" and task.options(task.load("eval", str(tmp_path))[0]) == ("[1]", "[2]")
    assert formats.infer_task_type(_raw("BoolQ_test.json")) == "bool"
    assert formats.infer_task_type(_raw("GSM8K.json")) == "gsm8k"
    assert formats.infer_task_type([tasks.mcq_to_cloze(r) for r in _raw("OBQA_test.json")]) == "cloze"


# --- parsers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,labels,expected", [
    ("[B]", "ABCD", "[B]"),
    ("[b]", "ABCD", "[B]"),
    ("[E]", "ABCDE", "[E]"),
    ("[E]", "ABCD", None),  # not an option of this question
    ("[3]", "1234", "[3]"),
    ("The answer is 2.", "1234", "[2]"),
    ("Answer: (C)", "ABCD", "[C]"),
    ("the answer is D because ...", "ABCD", "[D]"),
    ("C: the plains", "ABCD", "[C]"),
    ("B", "ABCD", "[B]"),
    ("A dog is an animal.", "ABCD", None),  # the article is not option A
    ("the answer is a bacterial population", "ABCD", None),
    ("[ans]", "ABCD", None),
    ("I think [A] or maybe [B]", "ABCD", "[A]"),
    ("", "ABCD", None),
])
def test_extract_mcq_answer(text, labels, expected):
    assert extract_mcq_answer(text, tuple(labels)) == expected


@pytest.mark.parametrize("text,expected", [
    ("[True]", "[True]"), ("[true]", "[True]"), ("[FALSE]", "[False]"), ("False.", "[False]"),
    ("The statement is true.", "[True]"), ("Yes, it is.", "[True]"), ("No", "[False]"),
    ("There is no way to know", None), ("I cannot tell", None),
])
def test_extract_bool_answer(text, expected):
    assert extract_bool_answer(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("The answer is 42.", 42.0),
    ("#### 1,234", 1234.0),
    ("so she pays $1,234.50.\n#### $1,234.50", 1234.5),
    ("The temperature drops to -5 degrees.\n#### -5", -5.0),
    ("#### -3.25", -3.25),
    ("10 - 4 = 6 apples", 6.0),  # a subtraction, not a negative number
    ("He has 10-4=6 left", 6.0),
    ("The answer is: $18 per day. Later 3 more.", 18.0),
    ("Total is 3.5 hours", 3.5),
    ("####\n72", 72.0),
    ("#### 12\nsome trailing text 99", 12.0),
    ("1,000,000 people", 1000000.0),
    ("numbers 1,2,3", 3.0),
    ("I don't know.", None),
    ("", None),
])
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_gsm8k_numbers_compare_numerically():
    rec = {"prompt": "q", "response": "... #### 1,234"}
    assert formats.is_correct(1234.0, rec, "gsm8k") and not formats.is_correct(1235.0, rec, "gsm8k")
    assert not formats.is_correct(None, rec, "gsm8k")
    assert formats.is_correct(extract_gsm8k_answer("Total: $1234.00."), rec, "gsm8k")
