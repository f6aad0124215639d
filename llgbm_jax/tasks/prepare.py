"""Build the task data files from the public data sets (needs a network and ``pip install datasets``;
``llgbm-jax prepare-data``).

Writes, in the prompt/response/system JSON layout that `llgbm_jax.tasks` reads (the layout of the Drag-and-Drop
LLMs code base, system strings as found there, typos included):

    ARC-e_train.json / ARC-e_test.json   allenai/ai2_arc (ARC-Easy) train / test      CC BY-SA 4.0
    BoolQ_train.json / BoolQ_test.json   google/boolq train / validation              CC BY-SA 3.0
    OBQA_train.json / OBQA_test.json     allenai/openbookqa (main) train / test       Apache-2.0
    GSM8K.json                           openai/gsm8k (main) test                     MIT

The files are third-party text: they stay outside the repository, in a folder the user names.
"""

from __future__ import annotations

import os

from llgbm_jax.utils.io import read_json, write_json_atomic

MCQ_SYSTEM = ("you are a helpful AI assistant, and you are going to answer the question of the user by picking one "
              "answer among the given choices. Answer the chapital character of the choice directly. You'll only need "
              "to answer by a single [ans] (ans is A,B,C,D or True/False)")
BOOL_SYSTEM = ("you are a helpful AI assistant, and you are going to answer the question of the user by determining "
               "the statement is true or false. Answer true or false directly. You'll only need to answer by a single "
               "[ans] (ans is A,B,C,D or True/False)")


def _options(choices) -> list[str]:
    return [f"{label}: {text}" for label, text in zip(choices["label"], choices["text"])]


def arc(row) -> dict:
    prompt = "\n".join([row["question"]] + _options(row["choices"]))
    return {"prompt": prompt, "response": f"[{row['answerKey']}]", "system": MCQ_SYSTEM}


def boolq(row, test: bool) -> dict:
    question = row["question"].rstrip("?") + "?"
    prompt = question + ("\n[True]\n[False]" if test else "")
    return {"prompt": prompt, "response": f"[{bool(row['answer'])}]", "system": BOOL_SYSTEM}


def obqa(row, test: bool) -> dict:
    lines = [row["question_stem"]] + _options(row["choices"])
    if test:
        prompt = "Please answer the question by directly replying [A]/[B]/[C]/[D]:\n" + "\n".join(lines) + "."
    else:
        prompt = "\n".join(lines + ["Please answer the question choosing from A/B/C/D."])
    return {"prompt": prompt, "response": f"[{row['answerKey']}]", "system": MCQ_SYSTEM}


def gsm8k(row) -> dict:
    return {"prompt": row["question"], "response": row["answer"]}


def build() -> dict[str, list[dict]]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise ImportError("building the data folder needs the `datasets` package: pip install datasets") from None
    arc_ds = load_dataset("allenai/ai2_arc", "ARC-Easy")
    boolq_ds = load_dataset("google/boolq")
    obqa_ds = load_dataset("allenai/openbookqa", "main")
    gsm_ds = load_dataset("openai/gsm8k", "main")
    return {
        "ARC-e_train.json": [arc(r) for r in arc_ds["train"]],
        "ARC-e_test.json": [arc(r) for r in arc_ds["test"]],
        "BoolQ_train.json": [boolq(r, False) for r in boolq_ds["train"]],
        "BoolQ_test.json": [boolq(r, True) for r in boolq_ds["validation"]],
        "OBQA_train.json": [obqa(r, False) for r in obqa_ds["train"]],
        "OBQA_test.json": [obqa(r, True) for r in obqa_ds["test"]],
        "GSM8K.json": [gsm8k(r) for r in gsm_ds["test"]],
    }


def prepare_data(out: str = "data", check_against: str | None = None) -> dict[str, int]:
    """Download the four data sets and write the files into ``out``; with ``check_against`` (an existing data
    folder) print how many records of each file differ. Returns the record count per file."""
    files = build()
    for name, records in files.items():
        write_json_atomic(os.path.join(out, name), records)
        print(f"{name}: {len(records)} records")
        if check_against and os.path.isfile(os.path.join(check_against, name)):
            ref = read_json(os.path.join(check_against, name))
            differ = sum(a != b for a, b in zip(records, ref)) + abs(len(records) - len(ref))
            print(f"  vs {check_against}: {len(ref)} records, {differ} differ")
    return {name: len(records) for name, records in files.items()}
