"""Held-out family tasks (`llgbm_jax.tasks.family_splits`) and the unseen-tasks study (`llgbm_jax.evaluation.unseen`):
the split holds out values inside and outside the seen range and whole kinds; held-out tasks never reach the
generator's training targets or conditions; the study runs end to end on a tiny model and resumes without work."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from llgbm_jax.ablations import MODES, AblationConfig, setup_base_components
from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.tasks.family import KINDS, descriptions, family_task_names, kind_of
from llgbm_jax.tasks.family_splits import FamilySplit, family_split

from test_dataset import write_zoo

STUDY_TASKS = ("fam_rotate_1", "fam_rotate_2", "fam_rotate_3", "fam_rotate_4", "fam_snake_case", "fam_camel_case")


def test_split_holds_out_values_inside_and_outside_the_range_and_whole_kinds():
    split = family_split()
    assert set(split.seen) | set(split.heldout) == set(family_task_names())
    assert not set(split.seen) & set(split.heldout) and len(split.heldout) == len(set(split.heldout))
    assert len(split.held_out_kinds) >= 2 and {kind_of(t) for t in split.kind} == set(split.held_out_kinds)
    param = lambda t: next(x.param for x in KINDS[kind_of(t)].transforms if f"fam_{x.name}" == t)
    for name, kind in KINDS.items():
        if name in split.held_out_kinds or not kind.params:
            continue
        seen = [param(t) for t in split.seen if kind_of(t) == name]
        inside = [param(t) for t in split.inside if kind_of(t) == name]
        outside = [param(t) for t in split.outside if kind_of(t) == name]
        assert inside and outside, name
        assert all(min(seen) < p < max(seen) for p in inside) and all(p > max(seen) for p in outside), name
    assert FamilySplit.from_dict(json.loads(json.dumps(split.to_dict()))) == split
    wider = family_split(("format",), inside_per_kind=2, outside_per_kind=2)
    assert {"fam_add_19", "fam_add_20"} <= set(wider.outside) and "fam_digit_sum" in wider.seen
    assert sum(kind_of(t) == "add" for t in wider.inside) == 2
    with pytest.raises(ValueError, match="too few parameter values"):
        family_split((), inside_per_kind=6, outside_per_kind=1, tasks=family_task_names("rotate"))
    with pytest.raises(KeyError, match="unknown or have no task"):
        family_split(("nonsense",))
    with pytest.raises(KeyError, match="not tasks of the family"):
        family_split(tasks=["arc_e"])
    small = family_split(("format",), tasks=["fam_rotate_1", "fam_rotate_2", "fam_rotate_3", "fam_rotate_4",
                                             "fam_snake_case"])
    assert (small.seen, small.inside, small.outside, small.kind) == (
        ("fam_rotate_1", "fam_rotate_3"), ("fam_rotate_2",), ("fam_rotate_4",), ("fam_snake_case",))


@pytest.fixture(scope="module")
def family_zoo(tiny_smollm2_vocab, tmp_path_factory):
    _, tiny = tiny_smollm2_vocab
    root = tmp_path_factory.mktemp("unseen-zoo")
    tasks = family_task_names("rotate") + family_task_names("format")
    zoo = write_zoo(root / "zoo", tasks=tasks, steps=(10, 20, 30), model_config=tiny.config)
    return tiny, zoo, root, family_split(("format",), tasks=tasks)


def test_gains_pool_seed_averaged_questions_over_tasks():
    """Each question's hits are averaged over the seeds, then the paired differences are pooled over tasks: n
    counts questions, not seeds × questions. Expected values are worked out by hand."""
    from llgbm_jax.evaluation.supervision import pooled_gains
    from llgbm_jax.evaluation.unseen import summarize_seen

    class Split:
        group = staticmethod(lambda t: {"c": "inside", "d": "kind"}[t])

    seen_base, unseen_base = {"a": [0, 0, 1], "b": [1, 0, 0]}, {"c": [0, 0], "d": [0, 1]}
    seen_gen = [{"a": [1, 0, 1], "b": [1, 1, 0]}, {"a": [1, 1, 1], "b": [0, 1, 0]}]
    unseen_gen = [{"c": [1, 0], "d": [0, 1]}, {"c": [1, 1], "d": [1, 1]}]
    random_text = [{"c": [0, 0], "d": [0, 0]}, {"c": [1, 0], "d": [0, 1]}]
    fixed = {"oracle": {"c": [1, 1], "d": [1, 1]}, "mean_teachers": unseen_base,
             "multitask": {"c": [1, 1], "d": [0, 0]}}
    trials = [{"comparison": "steps", "mode": "delta_w", "seed": s,
               "seen_hits": {"base": seen_base, "teacher": seen_base, "generated": seen_gen[s]},
               "unseen_hits": {"base": unseen_base, **fixed, "generated": unseen_gen[s], "random_text": random_text[s]}}
              for s in (0, 1)]
    got = pooled_gains(trials, Split())["steps/delta_w"]
    seen_diffs = [1, .5, 0, -.5, 1, 0]  # seed-averaged generated (a: 1 .5 1, b: .5 1 0) minus base
    assert got["seeds"] == [0, 1]
    assert got["generated"]["seen"]["n"] == 6 and got["generated"]["seen"]["gain"] == pytest.approx(1 / 3)
    assert got["generated"]["seen"]["se"] == pytest.approx(np.std(seen_diffs, ddof=1) / np.sqrt(6))
    assert got["generated"]["unseen"]["gain"] == pytest.approx(0.5) and got["generated"]["unseen"]["n"] == 4
    assert got["generated"]["unseen_inside"]["gain"] == pytest.approx(0.75)
    assert got["generated"]["unseen_kind"]["gain"] == pytest.approx(0.25)
    assert "unseen_outside" not in got["generated"]  # no task in that group
    assert got["minus"]["multitask"]["unseen_inside"]["gain"] == pytest.approx(-0.25)
    assert got["minus"]["random_text"]["unseen"] == pytest.approx({"gain": 0.5, "se": 0.0, "gain_in_se": 0.0, "n": 4})
    seen = summarize_seen({t: {"base": seen_base[t], "teacher": seen_base[t], "generated": [g[t] for g in seen_gen]}
                           for t in seen_base})
    assert seen["generated"]["gain"] == pytest.approx(1 / 3) and seen["generated"]["n"] == 6
    assert seen["teacher"]["gain"] == 0 and seen["recovered"] is None



@pytest.mark.parametrize("restrict", [True, False])
def test_heldout_tasks_never_reach_training_targets_or_conditions(family_zoo, restrict):
    """With the split's seen tasks (as the study trains), no held-out task's teacher is a training or held-out
    target and none of its prompts or descriptions is a condition; without the restriction they are (the check
    can fail)."""
    tiny, zoo, root, split = family_zoo
    cfg = TrainingConfig(lora_rank=4, lora_alpha=8.0, num_probes=2, max_probe_length=64, delta_batch_probes=2,
                         num_prompts_per_adapter=2, description_share=0.5, teacher_checkpoints="final", zoo_dir=zoo,
                         data_dir=str(root / "no-data"), delta_cache_dir=str(root / "cache" / "deltas"),
                         embedding_cache_dir=str(root / "cache" / "embeddings"))
    comp = setup_base_components(AblationConfig(tasks=split.seen if restrict else None), cfg, base_model=tiny,
                                 show_progress=False)
    targets = {a.task for d in (comp.dataset, comp.eval_dataset) for a in d.adapters}
    texts = set(comp.dataset.texts) | set(comp.eval_dataset.texts)
    heldout_texts = {p for a in comp.adapters if a.task in split.heldout for p in a.prompts}
    heldout_texts |= {d for t in split.heldout for d in descriptions(t)}
    leaks = (targets & set(split.heldout)) | (texts & heldout_texts)
    if restrict:
        assert not leaks and targets == set(split.seen)
        drawn = {p for i in range(len(comp.dataset)) for e in range(8) for p in comp.dataset.sample(i, e)["prompts"]}
        assert drawn & {d for t in split.seen for d in descriptions(t)}  # descriptions are training conditions
    else:
        assert leaks


@pytest.fixture(scope="module")
def study(tiny_smollm2_vocab, tmp_path_factory):
    from llgbm_jax.evaluation import unseen
    from llgbm_jax.teachers import zoo as zoo_module

    _, tiny = tiny_smollm2_vocab
    root = tmp_path_factory.mktemp("unseen-study")
    family = zoo_module.PRESETS["family"]
    tiny_preset = dataclasses.replace(family, eval_samples=3, teacher=dataclasses.replace(
        family.teacher, steps=4, warmup_steps=1, save_every=1, adapters_per_run=2, checkpoint_every=100))
    mp = pytest.MonkeyPatch()
    mp.setitem(zoo_module.PRESETS, "tiny", tiny_preset)
    cfg = unseen.UnseenConfig(run_dir=str(root / "run"), zoo_dir=str(root / "zoo"), zoo_preset="tiny",
                              tasks=STUDY_TASKS, held_out_kinds=("format",), seeds=(0, 1), steps=4,
                              num_prompts=2, eval_samples=3, multitask_steps=3, generator_hidden=16, num_probes=2,
                              max_probe_length=64)
    result = unseen.run(cfg, base_model=tiny, show_progress=False)
    yield tiny, cfg, result, mp
    mp.undo()


def test_study_scores_every_variant_on_every_heldout_task(study):
    from llgbm_jax.evaluation import unseen
    from llgbm_jax.evaluation.unseen import GENERATED, VARIANTS

    tiny, cfg, result, _ = study
    split = FamilySplit.from_dict(result["split"])
    assert split.seen == ("fam_rotate_1", "fam_rotate_3") and split.inside == ("fam_rotate_2",)
    assert split.outside == ("fam_rotate_4",) and split.kind == ("fam_snake_case", "fam_camel_case")
    with open(os.path.join(cfg.run_dir, "split.json")) as f:
        assert FamilySplit.from_dict(json.load(f)) == split
    assert os.path.isfile(os.path.join(cfg.run_dir, "unseen.png"))
    assert result["multitask_steps"] == 3 and set(result["nearest_teacher"].values()) <= set(split.seen)
    kinds = unseen.kind_table(cfg.zoo_dir, unseen.zoo_config(cfg))  # the zoo's teachers per kind, pooled
    assert [(r["kind"], r["tasks"], r["n"]) for r in kinds] == [("rotate", 4, 12), ("format", 2, 6)]
    assert "rotate" in unseen.format_kind_table(kinds).splitlines()[1]
    for task, h in result["hits"].items():
        assert set(h) == set(VARIANTS)
        for v in VARIANTS:
            per = h[v]["exact_match"]
            if v in GENERATED:
                assert len(per) == 2 and all(len(x) == 3 for x in per)  # one list of hits per seed
            else:
                assert len(per) == 3
    summary = result["summary"]
    assert set(summary["groups"]) == {"inside", "outside", "kind", "all"}
    pooled = summary["groups"]["all"]["cloze"]
    n = 3 * len(split.heldout)
    assert all(pooled["gain_over_base"][v]["n"] == n for v in VARIANTS[1:])
    # The pooled gain is the mean over tasks and questions of the (seed-averaged) paired differences.
    diffs = [np.mean(result["hits"][t]["generated"]["cloze"], axis=0) - np.asarray(result["hits"][t]["base"]["cloze"])
             for t in split.heldout]
    assert pooled["gain_over_base"]["generated"]["gain"] == pytest.approx(float(np.mean(np.concatenate(diffs))))
    per_seed = pooled["per_seed_gain"]["generated"]  # each seed's own gain; their mean is the pooled gain
    assert len(per_seed) == 2 and np.mean(per_seed) == pytest.approx(pooled["gain_over_base"]["generated"]["gain"])
    seen = result["seen"]  # the generator's fit on its training tasks (held-out prompts), cloze
    assert seen["tasks"] == list(split.seen) and seen["generated"]["n"] == seen["teacher"]["n"] == 3 * len(split.seen)
    assert all(len(h["generated"]) == 2 and len(h["base"]) == len(h["teacher"]) == 3 for h in seen["hits"].values())
    for seed, c in result["collapse"].items():
        assert len(c["cosine_to_mean_teachers"]) == len(split.heldout)
        assert len(c["cosine_to_oracle"]) == len(split.heldout) and c["oracle_spread"] >= 0
        assert all(-1 - 1e-9 <= x <= 1 + 1e-9 for x in c["cosine_to_mean_teachers"] + c["cosine_to_oracle"])


def test_delta_w_gram_matches_the_dense_inner_products(study):
    from llgbm_jax.evaluation.unseen import collapse_check, delta_w_gram
    from llgbm_jax.lora import delta_w, mean_lora
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.teachers.manifest import final_adapters, read_zoo

    tiny, cfg, _, _ = study
    finals = [load_peft_adapter(a.path, tiny.config) for a in final_adapters(read_zoo(cfg.zoo_dir))[:3]]
    loras = finals + [mean_lora(finals)]  # other ranks too
    dense = [np.concatenate([np.asarray(delta_w(l, m)).ravel() for m in sorted(l.A)]) for l in loras]
    want = np.asarray([[a @ b for b in dense] for a in dense])
    np.testing.assert_allclose(delta_w_gram(loras), want, rtol=1e-4, atol=1e-9)
    c = collapse_check(finals[:2], [finals[0], finals[2]], loras[-1])
    cos = want / np.sqrt(np.outer(np.diag(want), np.diag(want)))
    np.testing.assert_allclose(c["cosine_to_oracle"], [1.0, cos[1, 2]], rtol=1e-4)
    np.testing.assert_allclose(c["cosine_to_mean_teachers"], cos[:2, 3], rtol=1e-4)


def test_shared_initialisation_aligns_related_teachers(study, tmp_path):
    """One LoRA initialisation for every task (`ZooConfig.shared_init`) puts related teachers' ΔW in one row space:
    their cosines rise well above those of independently initialised teachers (the study's zoo)."""
    from llgbm_jax.evaluation.unseen import teacher_cosines, zoo_config
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.teachers.manifest import final_adapters, read_zoo
    from llgbm_jax.teachers.zoo import build_zoo

    tiny, cfg, result, _ = study
    independent = zoo_config(cfg)
    shared = dataclasses.replace(independent, shared_init=True)
    assert len(set(shared.run_seeds(t, 1)[0] for t in STUDY_TASKS)) == 1
    assert len(set(independent.run_seeds(t, 1)[0] for t in STUDY_TASKS)) == len(STUDY_TASKS)
    build_zoo(str(tmp_path / "zoo"), shared, base_model=tiny, show_progress=False)

    def cosines(zoo_dir):
        return teacher_cosines({a.task: load_peft_adapter(a.path, tiny.config)
                                for a in final_adapters(read_zoo(zoo_dir))})

    apart, together = cosines(cfg.zoo_dir), cosines(str(tmp_path / "zoo"))
    mean = lambda c: {k: v["mean"] for k, v in c.items()}
    assert mean(result["teacher_cosines"]) == pytest.approx(mean(apart))
    assert apart["neighbours"]["n"] == 3 + 1 and apart["same_kind"]["n"] == 6 + 1 and apart["other_kind"]["n"] == 8
    # Tiny model, 4 steps: neighbours 0.21 shared, 0.03 independent (SmolLM2's family zoo: docs/unseen.md).
    assert together["neighbours"]["mean"] > max(0.1, 4 * apart["neighbours"]["mean"]), (together, apart)


TRAINING = ("llgbm_jax.teachers.zoo.train_run", "llgbm_jax.teachers.run.train_run")


def refuse_calls(monkeypatch, names, why: str) -> None:
    """Make each function named in ``names`` fail the test with ``why`` if it is called."""
    def refuse(*a, **k):
        raise AssertionError(why)

    for name in names:
        monkeypatch.setattr(name, refuse)


def assert_same_baselines(got: dict, result: dict) -> None:
    """The same held-out tasks and the same hits for every baseline that does not depend on a generator."""
    assert set(got["hits"]) == set(result["hits"])
    for h, hits in got["hits"].items():
        for v in ("base", "oracle", "mean_teachers", "multitask"):
            assert hits[v] == result["hits"][h][v], (h, v)


def test_study_rerun_trains_and_scores_nothing(study, monkeypatch):
    from llgbm_jax.evaluation import unseen

    tiny, cfg, result, _ = study

    refuse_calls(monkeypatch, TRAINING + ("llgbm_jax.scoring.accuracy.compute_accuracy_with_lora",
                                          "llgbm_jax.scoring.accuracy.exact_match_accuracy"),
                 "a finished study trained or scored again")
    again = unseen.run(cfg, base_model=tiny, show_progress=False)
    assert again["hits"] == result["hits"] and again["summary"] == result["summary"]


def test_study_of_another_supervision_mode_shares_split_teachers_and_baselines(study, monkeypatch):
    from llgbm_jax.evaluation import unseen
    from llgbm_jax.generator import sft_data

    tiny, cfg, result, _ = study

    refuse_calls(monkeypatch, TRAINING, "a teacher or the multi-task LoRA was trained again")
    made = []
    real = sft_data.SFTData
    monkeypatch.setattr(sft_data, "SFTData", lambda *a, **k: made.append(1) or real(*a, **k))
    sft_cfg = dataclasses.replace(cfg, mode="sft", seeds=(0,))
    sft = unseen.run(sft_cfg, base_model=tiny, show_progress=False)
    out = os.path.join(cfg.run_dir, "sft")
    assert made and os.path.isdir(os.path.join(out, "seed0", "checkpoints"))  # trained end to end, in its folder
    assert os.path.isfile(os.path.join(out, "results.json")) and os.path.isfile(os.path.join(out, "unseen.png"))
    assert sft["config"]["mode"] == "sft" and "mode" not in cfg.to_dict()
    assert unseen.load_results(cfg.run_dir)["config"] == json.loads(json.dumps(cfg.to_dict()))  # ΔW study's, kept
    assert_same_baselines(sft, result)
    with pytest.raises(ValueError, match="unknown supervision mode"):
        dataclasses.replace(cfg, mode="ΔW")


def test_generators_on_the_multitask_lora_add_a_correction_to_it(study, monkeypatch):
    """``on_multitask``: its own folder, the same split and baselines (nothing retrained), and every generated
    adapter is the multi-task LoRA plus the generator's correction (with the B heads zeroed, exactly its ΔW)."""
    from llgbm_jax.evaluation import unseen
    from llgbm_jax.generator.model import generate_lora
    from llgbm_jax.lora.adapter import delta_w

    tiny, cfg, result, _ = study

    refuse_calls(monkeypatch, TRAINING, "a teacher or the multi-task LoRA was trained again")
    on = dataclasses.replace(cfg, on_multitask=True, seeds=(0,))
    got = unseen.run(on, base_model=tiny, show_progress=False)
    out = os.path.join(cfg.run_dir, "delta_w_on_multitask")
    assert os.path.isfile(os.path.join(out, "results.json")) and os.path.isfile(os.path.join(out, "unseen.png"))
    assert got["config"]["on_multitask"] is True and "on_multitask" not in cfg.to_dict()
    assert_same_baselines(got, result)
    st = unseen.prepare(on, base_model=tiny, show_progress=False)
    gen, comp, _ = unseen.train_generator(st, 0, show_progress=False)  # finished: restored, not trained
    assert gen.training_config.base_adapter == unseen.multitask_path(on, st.multitask_steps)
    for head in gen.b_heads.values():
        head.kernel[...], head.bias[...] = 0 * head.kernel[...], 0 * head.bias[...]
    h = st.heldout[0]
    lora = generate_lora(gen, unseen.example_prompts(h, on.num_prompts, 0), comp.text_encoder)
    for m in st.multitask.modules:
        np.testing.assert_allclose(delta_w(lora, m), delta_w(st.multitask, m), rtol=1e-4, atol=1e-7)


def test_ablation_trial_at_the_studys_steps_is_the_studys_generator(study, tmp_path, monkeypatch):
    """A steps trial of the study's step count measures the study's generator of that mode and seed (trained by the
    `study` fixture) instead of training a second one; at another step count it trains in the ablation's folder."""
    from llgbm_jax.evaluation import supervision, unseen
    from llgbm_jax.generator import training
    from llgbm_jax.utils.lock import RunLocked, run_lock

    tiny, cfg, result, _ = study
    s = unseen.prepare(cfg, base_model=tiny, show_progress=False)
    abl = AblationConfig(run_dir=str(tmp_path / "ablations"), modes=("delta_w",), seeds=(0,), steps=cfg.steps,
                         seen_tasks=1, study=cfg)
    real = training.make_train_step

    def refuse(*a, **k):
        pytest.fail("the study's finished generator was trained again")

    monkeypatch.setattr(training, "make_train_step", lambda *a, **k: refuse)
    trial = supervision.run_trial(s, abl, "steps", "delta_w", 0, cfg.steps, s.seen[:1], show_progress=False)
    assert trial["loss_history"][-1] == result["training"][0]["loss_last"] and len(trial["loss_history"]) == cfg.steps
    assert os.listdir(os.path.join(abl.run_dir, "steps", "delta_w", "seed0")) == ["trial.json"]
    with run_lock(os.path.join(cfg.run_dir, "seed0")):  # one job at a time trains a generator folder
        with pytest.raises(RunLocked, match="seed0 is in use by another job"):
            unseen.train_generator(s, 0, show_progress=False)
    monkeypatch.setattr(training, "make_train_step", real)
    other = supervision.run_trial(s, abl, "steps", "delta_w", 0, cfg.steps - 1, s.seen[:1], show_progress=False)
    assert os.path.isdir(os.path.join(abl.run_dir, "steps", "delta_w", "seed0", "checkpoints"))
    assert len(other["loss_history"]) == cfg.steps - 1
    # A run shorter than the study's warm-up (a budget or timing run) gets its own schedule.
    longer = dataclasses.replace(s, config=dataclasses.replace(cfg, steps=200))  # warm-up 20 steps
    _, _, short = unseen.train_generator(longer, 0, steps=3, run_dir=str(tmp_path / "short"), show_progress=False)
    assert short.step == 3 and max(short.lr_history) == pytest.approx(cfg.learning_rate)


@pytest.fixture(scope="module")
def ablation(study, tmp_path_factory):
    from llgbm_jax.evaluation import supervision

    tiny, cfg, _, _ = study
    abl = AblationConfig(run_dir=str(tmp_path_factory.mktemp("ablations")), modes=tuple(MODES),
                         seeds=(0,), steps=3, timing_steps=2, seen_tasks=1, study=cfg)
    return tiny, abl, supervision.run(abl, base_model=tiny, show_progress=False)


def test_ablation_writes_every_mode_comparison_and_metric(ablation):
    import csv

    from llgbm_jax.evaluation.supervision import METRICS, budget_steps

    tiny, abl, result = ablation
    rows = result["summary"]
    assert [(r["comparison"], r["mode"]) for r in rows] == (
        [("steps", m) for m in abl.modes] + [("budget", m) for m in abl.modes]
        + [("gauge", "delta_w"), ("gauge", "weight_only")])
    for r in rows:
        assert r["seeds"] == 1 and np.isfinite(r["final_loss"]) and -1 <= r["delta_w_cosine"] <= 1
        if r["comparison"] == "budget":  # delta_w's steps at its timed step, over the mode's timed step
            assert r["steps"] == budget_steps(result["step_seconds"], abl, r["mode"])
            if r["mode"] == "delta_w":  # its own budget: the steps trial itself, not trained again
                assert r["steps"] == abl.steps
        else:
            assert r["steps"] == abl.steps
    assert json.load(open(os.path.join(abl.run_dir, "step_seconds.json"))) == result["step_seconds"]
    assert set(result["step_seconds"]) == set(MODES) and all(v > 0 for v in result["step_seconds"].values())
    assert not [f for f in os.listdir(abl.run_dir) if f.startswith("timing-")]  # timing runs leave nothing
    with open(os.path.join(abl.run_dir, "summary.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and set(METRICS) <= set(table[0])
    assert os.path.isfile(os.path.join(abl.run_dir, "ablations.png"))
    trials = result["trials"]
    assert all(len(t["loss_history"]) == t["steps"] for t in trials)
    assert set(result["seen_tasks"]) <= set(FamilySplit.from_dict(json.load(open(
        os.path.join(abl.study.run_dir, "split.json")))).seen)
    # Hits are per question on the study's questions: every mode is compared with delta_w on the same ones.
    for t in trials:
        assert all(len(h) == abl.study.eval_samples for h in t["unseen_hits"]["generated"].values())
    assert set(result["versus_delta_w"]["steps"]) == set(MODES) - {"delta_w"}
    split = FamilySplit.from_dict(json.load(open(os.path.join(abl.study.run_dir, "split.json"))))
    versus = result["versus_delta_w"]["steps"]["weight_only"]
    assert versus["unseen"]["n"] == sum(versus[f"unseen_{g}"]["n"] for g in ("inside", "outside", "kind")
                                        if getattr(split, g))
    for t in trials:  # per-group gains pool the group's questions
        for g in ("inside", "outside", "kind"):
            assert (t["metrics"][f"unseen_{g}_gain"] is None) == (not getattr(split, g))
    for t in trials:  # one seed: the gains pooled over seeds are the trial's own
        p = result["pooled"][f"{t['comparison']}/{t['mode']}"]
        assert p["seeds"] == [0]
        for name, metric in (("seen", "seen_gain"), ("unseen", "unseen_gain")):
            assert p["generated"][name]["gain"] == pytest.approx(t["metrics"][metric])
        assert p["generated"]["unseen"]["n"] == versus["unseen"]["n"]
        assert p["minus"]["multitask"]["unseen"]["gain"] == pytest.approx(t["metrics"]["unseen_minus_multitask"])


def test_gauge_transformed_zoo_gives_delta_w_the_same_generator_and_weight_only_another(ablation):
    _, _, result = ablation
    gauge = result["gauge"]
    assert gauge["delta_w"]["max_relative_loss_difference"] < 1e-4
    assert gauge["weight_only"]["max_relative_loss_difference"] > 1e-2


def test_ablation_rerun_trains_nothing(ablation, monkeypatch):
    from llgbm_jax.evaluation import supervision

    tiny, abl, result = ablation

    def refuse(*a, **k):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr("llgbm_jax.evaluation.unseen.train_generator", refuse)
    assert supervision.run(abl, base_model=tiny, show_progress=False)["summary"] == result["summary"]
