"""Teacher training (`llgbm_jax.teachers`) on a tiny random Llama that uses SmolLM2's tokenizer.

- The SFT sequence is the chat template's own rendering of the exchange, and the loss mask covers the
  response and the end-of-turn token only; `sft_loss` equals transformers' causal-LM loss (PEFT model,
  same weights and adapter, labels -100 outside the response) within 1e-5 (float32).
- One `train_step` lowers the loss on a fixed batch; a killed and resumed run exports bitwise the same
  adapters as an uninterrupted one (and really resumed: only the missing steps ran).
- Exported adapters load in ``PeftModel.from_pretrained`` with no warnings and exactly our keys, giving
  our logits within 1e-4 (tiny) / 1e-3 (SmolLM2-135M, slow test).
- A run records what it was started with (configuration, seed, base model, fingerprint of its exact
  training records) and refuses a resume that differs, naming what changed.
- `build_zoo` writes a manifest of every adapter and the base/teacher accuracies (each per-question
  result equal to transformers' + PEFT's option scores); a second call trains and evaluates nothing;
  fewer held-out questions re-score base and teachers on the same ones; a zoo whose runs' training
  data changed (the leakage rule removing a record) is refused, naming the runs, and rebuilt on request.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import torch

from llgbm_jax import tasks, teachers
from llgbm_jax.base.model import BaseModel
from llgbm_jax.lora.adapter import LoRAConfig, init_lora
from llgbm_jax.lora.peft import load_peft_adapter, save_peft_adapter
from llgbm_jax.scoring import accuracy as ev
from llgbm_jax.tasks.registry import get_task
from llgbm_jax.utils import optim
from llgbm_jax.utils.io import content_key

from conftest import (DATA_DIR, hf_logits, load_in_peft, max_diff_real,
                      tiny_llama_with_smollm2_vocab, torch_option_logliks)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_TOL = 1e-5  # |our sft_loss - transformers/PEFT loss|, float32, tiny model
TINY_TOL, SMOLLM2_TOL = 1e-4, 1e-3  # max |logit difference| of exported adapters loaded in PEFT
SHORT = teachers.TeacherConfig(rank=4, alpha=8.0, steps=6, warmup_steps=1, save_every=2, adapters_per_run=2,
                               checkpoint_every=2, batch_size=2, learning_rate=5e-3, remat=False)


@pytest.fixture(scope="module")
def tiny(smollm2, tmp_path_factory):
    """``(torch_model, ours)``: a tiny random Llama with SmolLM2's vocabulary, our `BaseModel` of the same
    weights with SmolLM2's tokenizer (ids 1/2 are <|im_start|>/<|im_end|> in both)."""
    return tiny_llama_with_smollm2_vocab(smollm2, tmp_path_factory.mktemp("tiny-smollm2-vocab"), seed=7,
                                         initializer_range=0.3)  # peaked, not near-uniform, next tokens


@pytest.fixture(scope="module")
def arc_e():
    task = get_task("arc_e")
    return task, task.load("train", DATA_DIR)


@pytest.fixture(scope="module")
def mixed_batch(tiny, arc_e):
    """Three ARC-e examples (with system prompts), one GSM8K example (long response, no system) and
    one cloze ARC-e example (the answer text as response, no system)."""
    _, ours = tiny
    gsm, cloze = get_task("gsm8k"), get_task("arc_e_cloze")
    items = [(arc_e[0], r) for r in arc_e[1][:3]] + [(gsm, gsm.load("train", DATA_DIR)[0]),
                                                      (cloze, cloze.load("train", DATA_DIR)[0])]
    examples = [teachers.encode_sft(ours, task, r, 512) for task, r in items]
    return items, examples, teachers.collate(examples, ours.pad_token_id)


def test_loss_mask_covers_the_response_and_end_of_turn_only(tiny, mixed_batch):
    _, ours = tiny
    tok = ours.tokenizer
    items, examples, batch = mixed_batch
    assert teachers.end_of_turn_id(ours) == tok.convert_tokens_to_ids("<|im_end|>")
    b, width = batch["ids"].shape
    assert width % 32 == 0 and batch["target_ids"].shape[1] % 8 == 0
    for i, ((task, record), e) in enumerate(zip(items, examples)):
        # The whole sequence is the chat template's rendering of the exchange (minus its trailing newline).
        messages = ([{"role": "system", "content": record["system"]}] if record.get("system") else []) + [
            {"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
        rendered = tok.apply_chat_template(messages, tokenize=False)
        assert rendered.startswith(tok.decode(e.ids)) and rendered[len(tok.decode(e.ids)):] == "\n"
        n, k = len(e.ids), len(e.ids) - e.num_prompt
        assert batch["mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert batch["target_mask"][i].sum() == k
        real = batch["target_mask"][i] > 0
        targets = batch["target_ids"][i][real]
        assert tok.decode(targets) == record["response"] + "<|im_end|>"
        # Each target is predicted from the position just before it, and nothing before the response is a target.
        pos = batch["target_pos"][i][real]
        np.testing.assert_array_equal(batch["ids"][i][pos + 1], targets)
        assert pos.min() == e.num_prompt - 1 and pos.max() == n - 2
        assert tok.decode(batch["ids"][i][:e.num_prompt]) == task.format_prompt(record, ours)
        assert record["prompt"] not in tok.decode(targets)
        if record.get("system"):
            assert record["system"] not in tok.decode(targets)


def test_end_of_turn_is_the_templates_not_the_first_eos(tiny, arc_e):
    """With several EOS ids (Qwen's generation config lists <|endoftext|> before <|im_end|>), the response
    still ends with the token the chat template writes after an assistant turn."""
    _, ours = tiny
    two_eos = BaseModel(dataclasses.replace(ours.config, eos_token_ids=(0, 2)), ours.params, ours.tokenizer)
    assert two_eos.eos_token_ids == (0, 2) and ours.tokenizer.convert_ids_to_tokens(0) == "<|endoftext|>"
    assert teachers.end_of_turn_id(two_eos) == 2
    task, train = arc_e
    assert teachers.encode_sft(two_eos, task, train[0], 512).ids[-1] == 2


def test_sft_loss_equals_transformers_peft_loss(tiny, mixed_batch, tmp_path):
    """Our loss = transformers' own causal-LM loss (``labels`` = -100 on the prompt and padding) of the
    PEFT model with the same adapter; the labels are built from the raw examples, not from our batch."""
    torch_model, ours = tiny
    _, examples, batch = mixed_batch
    lora = init_lora(jax.random.PRNGKey(1), ours.config, LoRAConfig(4, 8), random_b=True, b_std=0.2)
    pm = load_in_peft(torch_model, save_peft_adapter(lora, str(tmp_path / "a"), "tiny-llama"))
    labels = np.full(batch["ids"].shape, -100, np.int64)
    for i, e in enumerate(examples):
        labels[i, e.num_prompt:len(e.ids)] = e.ids[e.num_prompt:]
    with torch.no_grad():
        ref = pm(input_ids=torch.as_tensor(batch["ids"], dtype=torch.long),
                 attention_mask=torch.as_tensor(batch["mask"]), labels=torch.as_tensor(labels)).loss.item()
        base_ref = torch_model(input_ids=torch.as_tensor(batch["ids"], dtype=torch.long),
                               attention_mask=torch.as_tensor(batch["mask"]),
                               labels=torch.as_tensor(labels)).loss.item()
    for remat in (False, True):
        got = float(teachers.sft_loss(lora, ours.params, ours.config, batch, remat=remat))
        print(f"remat={remat}: ours {got:.7f}  transformers+PEFT {ref:.7f}  |diff| {abs(got - ref):.1e}")
        assert abs(got - ref) <= LOSS_TOL
    assert abs(float(teachers.sft_loss(None, ours.params, ours.config, batch)) - base_ref) <= LOSS_TOL
    assert abs(ref - base_ref) > 0.05  # the adapter matters, so the comparison above tests the LoRA path


def test_train_step_lowers_the_loss(tiny, mixed_batch):
    _, ours = tiny
    _, _, batch = mixed_batch
    lora = init_lora(jax.random.PRNGKey(0), ours.config, LoRAConfig(4, 8))  # PEFT init: B = 0
    tx, _ = optim.adamw(1e-2, 0, 10)
    state = tx.init(lora)
    before = float(teachers.sft_loss(lora, ours.params, ours.config, batch))
    losses = []
    for _ in range(3):
        lora, state, m = teachers.train_step(lora, state, ours.params, ours.config, tx, batch, False)
        losses.append(float(m["loss"]))
        assert np.isfinite(float(m["grad_norm"])) and float(m["grad_norm"]) > 0
    after = float(teachers.sft_loss(lora, ours.params, ours.config, batch))
    print(f"loss {before:.4f} -> {losses} -> {after:.4f}")
    assert losses[0] == pytest.approx(before, abs=1e-5)  # the step reports the loss before its update
    assert losses[1] < losses[0] - 0.01  # one step already lowers it
    assert after < before - 0.05


def test_batch_plan_is_deterministic_disjoint_per_epoch_and_grouped_by_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 300, 203).tolist()
    bs, per_epoch = 4, 203 // 4
    plan = teachers.batch_plan(lengths, bs, 2 * per_epoch + 7, seed=3)
    assert plan == teachers.batch_plan(lengths, bs, 2 * per_epoch + 7, seed=3)
    assert plan != teachers.batch_plan(lengths, bs, 2 * per_epoch + 7, seed=4)
    assert len(plan) == 2 * per_epoch + 7 and all(len(b) == bs for b in plan)
    for e in range(2):
        flat = [i for b in plan[e * per_epoch:(e + 1) * per_epoch] for i in b]
        assert len(set(flat)) == len(flat) == per_epoch * bs  # every example at most once per epoch
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in plan])
    random_spread = np.mean([np.ptp(rng.choice(lengths, bs, replace=False)) for _ in range(1000)])
    print(f"mean length spread in a batch: {spread:.1f} (random batches: {random_spread:.1f})")
    assert spread < 0.25 * random_spread
    with pytest.raises(ValueError, match="fewer than one batch"):
        teachers.batch_plan([10, 20], 4, 1, 0)


def test_chunks_and_save_steps():
    records = [{"prompt": str(i), "response": "[A]"} for i in range(103)]
    chunks = teachers.chunk_records(records, 4, seed=0)
    assert chunks == teachers.chunk_records(records, 4, seed=0)
    prompts = [r["prompt"] for c in chunks for r in c]
    assert sorted(prompts) == sorted(r["prompt"] for r in records)  # disjoint and complete
    assert {len(c) for c in chunks} == {25, 26}

    assert teachers.TeacherConfig().save_steps() == [50, 60, 70, 80, 90, 100, 110, 120]
    assert SHORT.save_steps() == [4, 6]
    cpu = teachers.PRESETS["cpu"]
    assert cpu.teacher_for("arc_e_cloze").save_steps() == list(range(26, 97, 10))
    for t in ("boolq", "gsm8k", "fam_add_2"):
        assert cpu.teacher_for(t).save_steps() == list(range(10, 25, 2))
    assert cpu.teacher_for("gsm8k").batch_size == 4 and cpu.teacher_for("arc_e_cloze").batch_size == 8
    # Scored questions: 400 for ARC-e (the real-data task with a gain), 64 for the family, 32 for BoolQ and
    # OBQA, 8 for GSM8K.
    n = {t: cpu.eval_samples_for(get_task(t)) for t in cpu.tasks}
    assert n["arc_e_cloze"] == 400 and n["fam_add_2"] == 64 and n["boolq"] == n["obqa_cloze"] == 32 and n["gsm8k"] == 8
    # At least 4 real-data tasks and 8 family tasks of at least 3 kinds, each with 8 adapters.
    from llgbm_jax.tasks.family import family_task_names, kind_of

    family = [t for t in cpu.tasks if t in family_task_names()]
    assert len(cpu.tasks) - len(family) >= 4 and len(family) >= 8 and len({kind_of(t) for t in family}) >= 3
    assert all(len(cpu.teacher_for(t).save_steps()) * cpu.runs_per_task >= 8 for t in cpu.tasks)
    with pytest.raises(ValueError, match="do not fit"):
        teachers.TeacherConfig(steps=40, warmup_steps=10, save_every=10, adapters_per_run=4).save_steps()


class Killed(BaseException):
    """Stands for the process dying (not an ``Exception``: nothing in the trainer may catch it)."""


class StepCounter:
    """Wraps `teachers.train_step`; raises after ``kill_after`` calls (a killed process)."""

    def __init__(self, monkeypatch, kill_after=None):
        self.calls, self.kill_after = 0, kill_after
        self.inner = getattr(teachers.train_step, "inner", teachers.train_step)  # the real one
        monkeypatch.setattr(teachers.run, "train_step", self)  # where train_run looks it up

    def __call__(self, *args):
        if self.kill_after is not None and self.calls >= self.kill_after:
            raise Killed
        self.calls += 1
        return self.inner(*args)


def adapter_tensors(folder):
    from safetensors.numpy import load_file

    return load_file(os.path.join(folder, "adapter_model.safetensors"))


@pytest.mark.parametrize("how", ["stop_after", "killed"])
def test_killed_and_resumed_run_gives_the_same_adapters(tiny, arc_e, tmp_path, monkeypatch, how):
    _, ours = tiny
    task, train = arc_e
    records = train[:30]
    whole = teachers.train_run(ours, task, records, SHORT, str(tmp_path / "whole"), seed=5, show_progress=False)
    assert [a["step"] for a in whole.adapters] == [4, 6]

    part_dir = str(tmp_path / "part")
    counter = StepCounter(monkeypatch, kill_after=3 if how == "killed" else None)
    if how == "killed":  # dies during step 4, before its adapter: the last checkpoint is step 2
        with pytest.raises(Killed):
            teachers.train_run(ours, task, records, SHORT, part_dir, seed=5, show_progress=False)
    else:  # stops cleanly after step 3 (checkpoints at 2, none at 3)
        teachers.train_run(ours, task, records, SHORT, part_dir, seed=5, show_progress=False, stop_after=3)
    assert counter.calls == 3 and not os.path.exists(os.path.join(part_dir, "step_00004"))
    counter = StepCounter(monkeypatch)
    resumed = teachers.train_run(ours, task, records, SHORT, part_dir, seed=5, show_progress=False)
    assert counter.calls == 4  # steps 3..6 only: it resumed from the step-2 checkpoint
    assert resumed.history == whole.history
    assert [a["step"] for a in resumed.adapters] == [4, 6]
    for step in (4, 6):
        a = adapter_tensors(os.path.join(str(tmp_path / "whole"), f"step_{step:05d}"))
        b = adapter_tensors(os.path.join(part_dir, f"step_{step:05d}"))
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])  # bitwise
    assert any(np.abs(v).max() > 0 for k, v in a.items() if "lora_B" in k)  # it trained
    assert read_json(os.path.join(part_dir, "history.json")) == whole.history


def test_resume_refused_when_the_start_differs(tiny, arc_e, tmp_path, monkeypatch):
    """A run folder remembers what its run was started with (configuration, seed, records, base model);
    resuming it with anything else is refused, naming what changed, before a step runs."""
    _, ours = tiny
    task, train = arc_e
    run_dir = str(tmp_path / "run")
    teachers.train_run(ours, task, train[:30], SHORT, run_dir, seed=5, show_progress=False, stop_after=2)
    record = read_json(os.path.join(run_dir, teachers.START_RECORD))
    assert record == teachers.start_record(ours, task, train[:30], SHORT, 5)
    assert record["data"] == {"records": 30, "fingerprint": content_key(train[:30])}
    counter = StepCounter(monkeypatch)
    changed = train[:29] + [dict(train[29], response="[A]" if train[29]["response"] != "[A]" else "[B]")]
    for kwargs, names in [
            (dict(cfg=dataclasses.replace(SHORT, learning_rate=1e-3)), ["teacher.learning_rate: 0.005 -> 0.001"]),
            (dict(records=train[:29]), ["data.records: 30 -> 29", "data.fingerprint"]),
            (dict(records=changed), ["data.fingerprint"]),  # same count, one answer changed
            (dict(seed=6), ["seed: 5 -> 6"]),
            (dict(model=BaseModel(ours.config, ours.params, ours.tokenizer, name="other")), ["base_model.name"])]:
        args = {**dict(model=ours, records=train[:30], cfg=SHORT, seed=5), **kwargs}
        with pytest.raises(teachers.StaleRunError, match="resuming would mix") as e:
            teachers.train_run(args["model"], task, args["records"], args["cfg"], run_dir, seed=args["seed"],
                               show_progress=False)
        assert all(n in str(e.value) for n in names) and str(e.value).count(" -> ") == len(names), str(e.value)
    assert counter.calls == 0
    teachers.train_run(ours, task, train[:30], SHORT, run_dir, seed=5, show_progress=False)  # the same start resumes
    assert counter.calls == SHORT.steps - 2
    # A run folder from before start records were kept cannot be checked: it counts as changed.
    os.remove(os.path.join(run_dir, teachers.START_RECORD))
    assert "missing" in teachers.start_record_changes(run_dir, record)[0]
    assert teachers.start_record_changes(str(tmp_path / "new"), record) == []


def test_exported_adapters_load_in_peft_with_prompts_and_metrics(tiny, arc_e, tmp_path):
    torch_model, ours = tiny
    task, train = arc_e
    records = train[100:130]
    res = teachers.train_run(ours, task, records, SHORT, str(tmp_path / "run"), seed=2, show_progress=False,
                             data_info={"chunk": 0})
    assert [a["step"] for a in res.adapters] == SHORT.save_steps()
    ids, mask = ours.encode([ours.chat_prompt("Which is a mammal?\nA: shark\nB: whale"), ours.chat_prompt("Hi")])
    for a in res.adapters:
        lora = load_peft_adapter(a["path"], ours.config)
        pm = load_in_peft(torch_model, a["path"])  # no PEFT warnings, saved keys == PeftModel's keys
        got = ours.logits(ids, mask, lora)
        assert max_diff_real(hf_logits(pm, ids, mask), got, mask) <= TINY_TOL
        assert max_diff_real(got, ours.logits(ids, mask), mask) > 1e-3
        metrics = read_json(os.path.join(a["path"], "metrics.json"))
        prompts = read_json(os.path.join(a["path"], "prompts.json"))
        assert metrics["task"] == "arc_e" and metrics["step"] == a["step"] and metrics["seed"] == 2
        assert metrics["data"] == {"chunk": 0, "records": 30, "fingerprint": content_key(records),
                                   "leakage_rule": tasks.LEAKAGE_RULE} and metrics["examples"] == 30
        window = res.history["loss"][a["step"] - SHORT.save_every:a["step"]]
        assert metrics["train_loss"] == pytest.approx(np.mean(window))
        assert len(prompts) == metrics["examples_seen"] == len(set(prompts))
        assert SHORT.batch_size < len(prompts) <= SHORT.batch_size * a["step"]
        assert set(prompts) <= {r["prompt"] for r in records}


@pytest.fixture()
def small_data(tmp_path):
    """A data folder with the first 24 ARC-e train and 10 test records (keeps the zoo test fast)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name, n in (("ARC-e_train.json", 24), ("ARC-e_test.json", 10)):
        with open(os.path.join(DATA_DIR, name)) as f:
            records = json.load(f)[:n]
        with open(folder / name, "w") as f:
            json.dump(records, f)
    return str(folder)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def check_details(path, torch_model, ours, task, questions) -> list[bool]:
    """The per-question results saved at ``path`` against transformers' option log-likelihoods
    (``torch_model``: base or PEFT-wrapped); returns the hits."""
    details = read_json(path)
    assert len(details) == len(questions)
    for d, r in zip(details, questions):
        ref = torch_option_logliks(torch_model, ours.tokenizer, task.format_prompt(r, ours), task.options(r))
        np.testing.assert_allclose(d["logprobs"], ref, atol=1e-4, rtol=0)
        assert d["pred"] == task.options(r)[int(np.argmax(ref))] and d["gold"] == task.answer(r)
        assert d["correct"] == (d["pred"] == d["gold"])
    return [int(d["correct"]) for d in details]


def zoo_files(zoo_dir):
    out = {}
    for root, _, files in os.walk(zoo_dir):
        for f in files:
            path = os.path.join(root, f)
            out[os.path.relpath(path, zoo_dir)] = os.stat(path).st_mtime_ns
    return out


def test_build_zoo_manifest_and_no_retraining(tiny, small_data, tmp_path, monkeypatch):
    _, ours = tiny
    zoo_dir = str(tmp_path / "zoo")
    cfg = teachers.ZooConfig(model="tiny-llama", tasks=("arc_e",), runs_per_task=2, eval_samples=6, teacher=SHORT)
    manifest = teachers.build_zoo(zoo_dir, cfg, base_model=ours, data_dir=small_data, show_progress=False)
    assert read_json(os.path.join(zoo_dir, "manifest.json")) == manifest
    adapters = manifest["adapters"]
    assert [(a["task"], a["run"], a["step"]) for a in adapters] == [
        ("arc_e", "run0", 4), ("arc_e", "run0", 6), ("arc_e", "run1", 4), ("arc_e", "run1", 6)]
    for a in adapters:
        assert a["task_type"] == "mcq" and a["path"] == os.path.join("arc_e", a["run"], f"step_{a['step']:05d}")
        assert os.path.isfile(os.path.join(zoo_dir, a["path"], "adapter_model.safetensors"))
        assert os.path.isfile(os.path.join(zoo_dir, a["prompts"]))
        assert os.path.isfile(os.path.join(zoo_dir, a["history"]))
        assert a["metrics"]["step"] == a["step"] and np.isfinite(a["metrics"]["train_loss"])
        assert a["metrics"]["data"]["chunk"] == int(a["run"][3:]) and a["metrics"]["data"]["num_chunks"] == 2
        assert ("test_accuracy" in a["metrics"]) == (a["step"] == 6)  # the final adapter of each run is scored
    # Runs train on disjoint chunks of the train split.
    seen = [set(read_json(os.path.join(zoo_dir, a["prompts"]))) for a in adapters if a["step"] == 6]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    # Every score equals an independent computation: transformers (with PEFT for the teachers) scores
    # each option of the 6 held-out questions; the saved per-question results are its argmax, and
    # they add up to the reported accuracies and gains.
    task, torch_model = get_task("arc_e"), tiny[0]
    questions = task.load("eval", small_data)[:6]
    finals = [a for a in adapters if a["step"] == 6]
    base = manifest["base_accuracy"]["arc_e"]
    assert [(s["task"], s["run"], s["n"]) for s in manifest["summary"]] == [("arc_e", "run0", 6), ("arc_e", "run1", 6)]
    b_hits = check_details(os.path.join(zoo_dir, "arc_e", "base_test_details.json"), torch_model, ours, task, questions)
    assert (base["correct"], base["total"], base["accuracy"]) == (sum(b_hits), 6, sum(b_hits) / 6)
    for s, a in zip(manifest["summary"], finals):
        acc = a["metrics"]["test_accuracy"]
        t_hits = check_details(os.path.join(zoo_dir, a["path"], "test_details.json"),
                               load_in_peft(torch_model, os.path.join(zoo_dir, a["path"])), ours, task, questions)
        assert (acc["correct"], acc["total"], acc["accuracy"]) == (sum(t_hits), 6, sum(t_hits) / 6)
        assert s["base"] == base["accuracy"] and s["teacher"] == acc["accuracy"] and s["teacher_ci95"] == acc["ci95"]
        assert s["gain"] == pytest.approx(np.mean(np.subtract(t_hits, b_hits)))
        assert s["only_new_correct"] == sum(t > b for t, b in zip(t_hits, b_hits))

    # The script's report: one table line per run, and the loss curves as a PNG.
    from llgbm_jax.teachers.report import plot_loss_curves, summary_table

    table = summary_table(manifest).splitlines()
    assert len(table) == 3 and table[1].startswith("arc_e    run0") and table[2].startswith("arc_e    run1")
    assert f"{manifest['summary'][0]['gain']:+.3f}" in table[1]
    png = plot_loss_curves(zoo_dir, manifest, str(tmp_path / "curves.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    # Second call: nothing is trained or evaluated, no adapter file is rewritten.
    before = zoo_files(zoo_dir)

    def refuse(*args, **kwargs):
        raise AssertionError("build_zoo retrained or re-evaluated a finished run")

    real_train_run, real_scoring = teachers.train_run, ev.compute_accuracy_with_lora
    monkeypatch.setattr(teachers.zoo, "train_run", refuse)
    monkeypatch.setattr(ev, "compute_accuracy_with_lora", refuse)
    again = teachers.build_zoo(zoo_dir, cfg, base_model=ours, data_dir=small_data, show_progress=False)
    assert again["adapters"] == adapters and again["summary"] == manifest["summary"]
    after = zoo_files(zoo_dir)
    assert after.keys() == before.keys()
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"}

    # `llgbm-jax verify zoo`: every adapter loads in PEFT (strictly) and matches our logits; a damaged
    # adapter is reported, not skipped.
    from llgbm_jax.evaluation.verify import verify_adapters as verify

    results = verify(zoo_dir, adapters, ours, tiny[0], tol=1e-4)
    assert [r["path"] for r in results] == [a["path"] for a in adapters]
    assert all(r["ok"] and r["max_abs_logit_diff"] <= 1e-4 for r in results), results
    damaged = os.path.join(zoo_dir, adapters[0]["path"], "adapter_model.safetensors")
    with open(damaged, "r+b") as f:
        f.truncate(100)
    bad = verify(zoo_dir, adapters[:1], ours, tiny[0], tol=1e-4)[0]
    assert not bad["ok"] and "adapter_model.safetensors" in bad["error"]

    # Fewer held-out questions: base and teachers are scored again, on the same 4 questions; nothing retrains.
    monkeypatch.setattr(ev, "compute_accuracy_with_lora", real_scoring)
    cfg = dataclasses.replace(cfg, eval_samples=4)
    four = teachers.build_zoo(zoo_dir, cfg, base_model=ours, data_dir=small_data, show_progress=False)
    b4 = [int(d["correct"]) for d in read_json(os.path.join(zoo_dir, "arc_e", "base_test_details.json"))]
    assert four["base_accuracy"]["arc_e"]["total"] == 4 and b4 == b_hits[:4]
    for s, a in zip(four["summary"], finals):
        t4 = [int(d["correct"]) for d in read_json(os.path.join(zoo_dir, a["path"], "test_details.json"))]
        assert s["n"] == len(t4) == 4 and s["gain"] == pytest.approx(np.mean(np.subtract(t4, b4)))

    # New data under the leakage rule: a test question that training record 0 also asks (with other
    # options) removes that record, so both runs' chunks change and the zoo is stale. It is refused
    # before anything trains, naming the runs and what changed, and rebuilt on request.
    train_file, test_file = os.path.join(small_data, "ARC-e_train.json"), os.path.join(small_data, "ARC-e_test.json")
    first = read_json(train_file)[0]
    leak = {**first, "prompt": first["prompt"].split("\n")[0].upper() + "\nA: one\nB: two", "response": "[A]"}
    test_records = read_json(test_file) + [leak]
    with open(test_file, "w") as f:
        json.dump(test_records, f)
    with pytest.raises(teachers.StaleRunError) as e:
        teachers.build_zoo(zoo_dir, cfg, base_model=ours, data_dir=small_data, show_progress=False)
    message = str(e.value)
    assert "arc_e/run0" in message and "arc_e/run1" in message and "--rebuild-stale" in message
    assert "data.fingerprint" in message and "data.records: 12 -> 11" in message
    # Killed after its first rebuilt run, the call still adds its time to the zoo's wall-clock total.
    seconds, trained = read_json(os.path.join(zoo_dir, "manifest.json"))["seconds"], []

    def train_one_then_die(*args, **kwargs):
        if trained:
            raise Killed
        trained.append(real_train_run(*args, **kwargs))
        return trained[-1]

    monkeypatch.setattr(teachers.zoo, "train_run", train_one_then_die)
    with pytest.raises(Killed):
        teachers.build_zoo(zoo_dir, cfg, base_model=ours, data_dir=small_data, show_progress=False,
                           rebuild_stale=True)
    killed = read_json(os.path.join(zoo_dir, "manifest.json"))["seconds"]
    assert killed >= seconds + trained[0].seconds
    monkeypatch.setattr(teachers.zoo, "train_run", real_train_run)
    rebuilt = teachers.build_zoo(zoo_dir, cfg, base_model=ours, data_dir=small_data, show_progress=False,
                                 rebuild_stale=True)
    assert rebuilt["seconds"] > killed
    assert rebuilt["leakage"]["arc_e"] == {"train_records": 24, "removed": 1, "kept": 23}
    chunks = teachers.chunk_records(get_task("arc_e").load("train", small_data), 2, cfg.seed)
    assert first not in chunks[0] + chunks[1]
    for a in rebuilt["adapters"]:
        assert a["metrics"]["data"]["fingerprint"] == content_key(chunks[int(a["run"][3:])])
    assert [s["n"] for s in rebuilt["summary"]] == [4, 4]


@pytest.mark.slow
def test_smollm2_teacher_adapter_loads_in_peft_with_our_logits(smollm2, smollm2_torch, arc_e, tmp_path):
    """A real adapter: 3 steps on ARC-e with SmolLM2-135M, exported and loaded by PEFT on a copy of the
    transformers model: same logits within 1e-3, and visibly different from the base model."""
    task, train = arc_e
    cfg = teachers.TeacherConfig(steps=3, warmup_steps=0, save_every=1, adapters_per_run=1, checkpoint_every=3,
                                 batch_size=2, learning_rate=2e-3, max_seq_len=256, remat=False)
    # One batch per epoch: every step has the same shape, so train_step compiles once.
    res = teachers.train_run(smollm2, task, train[:2], cfg, str(tmp_path / "run"), seed=0, show_progress=False)
    path = res.adapters[-1]["path"]
    lora = load_peft_adapter(path, smollm2.config)
    pm = load_in_peft(smollm2_torch[0], path)  # a deepcopy: the session's torch model is not modified
    assert not hasattr(smollm2_torch[0], "peft_config")
    ids, mask = smollm2.encode([task.format_prompt(r, smollm2) for r in train[200:202]], pad_to_multiple_of=None)
    got = smollm2.logits(ids, mask, lora)
    diff = max_diff_real(hf_logits(pm, ids, mask), got, mask)
    moved = max_diff_real(got, smollm2.logits(ids, mask), mask)
    print(f"PEFT vs ours max |logit diff| {diff:.1e}; adapter vs base {moved:.2e}; losses {res.history['loss']}")
    assert diff <= SMOLLM2_TOL
    assert moved > 10 * SMOLLM2_TOL
