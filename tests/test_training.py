"""`llgbm_jax.generator.training`: the optimizer schedule, loss going down, exact resumption, refusals, NaN stops,
gradient accumulation and the evaluation metrics, on a small zoo of random teachers (no base model)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.generator.dataset import RealAdapterDataset
from llgbm_jax.generator.model import LoRAGenerator
from llgbm_jax.generator.training import TrainingDiverged, delta_w_metrics, evaluate, split_generator, train
from llgbm_jax.lora.adapter import LoRAConfig, delta_w

from test_dataset import MC, fake_embed, write_zoo

STEPS = 12


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return write_zoo(tmp_path_factory.mktemp("zoo"))


def config(tmp_path, **kw) -> TrainingConfig:
    # lr 1.5e-2 at hidden 32: a step moves the factors by ~0.8·hidden·lr of their scale, as 1e-3 does at 512
    kw = dict(num_steps=STEPS, warmup_steps=2, batch_size=2, learning_rate=1.5e-2, lora_rank=4, lora_alpha=8.0,
              checkpoint_every=4, checkpoint_dir=str(tmp_path / "ckpt"), generator_hidden=32, embedding_dim=8,
              num_prompts_per_adapter=4) | kw
    return TrainingConfig(**kw)


def generator(cfg: TrainingConfig, seed=0) -> LoRAGenerator:
    gen = LoRAGenerator(MC, LoRAConfig(cfg.lora_rank, cfg.lora_alpha), cond_dim=8, hidden=cfg.generator_hidden,
                        trunk_layers=cfg.generator_layers, embedding_dim=cfg.embedding_dim, rngs=nnx.Rngs(seed))
    gen.training_config = cfg
    return gen


def dataset(zoo, cfg, split="train"):
    return RealAdapterDataset(zoo, MC, split=split, num_prompts_per_adapter=cfg.num_prompts_per_adapter,
                              seed=cfg.seed, embed=fake_embed)


def params_of(gen):
    return split_generator(gen)[1]


def max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y)))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_train_lowers_the_loss_with_the_documented_schedule(zoo, tmp_path):
    cfg = config(tmp_path, num_steps=120, warmup_steps=4)
    state = train(generator(cfg), dataset(zoo, cfg), cfg, show_progress=False)
    assert state.step == 120 and len(state.loss_history) == len(state.grad_norm_history) == len(state.lr_history) == 120
    assert state.term_histories["loss_weight"] == pytest.approx(state.loss_history)  # lambda_weight 1, no delta term
    lr = np.asarray(state.lr_history)
    assert lr[0] == pytest.approx(0.1 * cfg.learning_rate) and lr.max() == pytest.approx(cfg.learning_rate)
    assert np.argmax(lr) == 4 and np.all(np.diff(lr[4:]) < 0)  # warm-up to step 4, then cosine decay
    assert lr[-1] > 0.01 * cfg.learning_rate and lr[-1] < 0.05 * cfg.learning_rate
    early, late = np.mean(state.loss_history[:5]), np.mean(state.loss_history[-5:])
    print(f"loss {early:.4f} -> {late:.4f}")
    assert late < 0.7 * early
    assert state.best_loss == min(state.loss_history)
    steps = np.asarray(state.step_seconds)  # each step's wall time; the first compiles
    assert len(steps) == 120 and steps.min() > 0 and steps.sum() <= state.seconds and steps[0] > np.median(steps[1:])


def test_resumed_run_equals_an_uninterrupted_one(zoo, tmp_path):
    cfg = config(tmp_path)
    ds = dataset(zoo, cfg)
    whole = generator(cfg)
    full = train(whole, ds, cfg.replace(checkpoint_dir=str(tmp_path / "whole")), show_progress=False)
    killed = generator(cfg)
    partial = train(killed, ds, cfg, show_progress=False, stop_after=7)  # checkpoints at 4 (and 7 is lost)
    assert partial.step == 7
    resumed = generator(cfg)  # a fresh process: new generator, same config
    state = train(resumed, ds, cfg, show_progress=False)
    assert state.step == STEPS and state.loss_history[:4] == full.loss_history[:4]
    assert len(state.step_seconds) == STEPS  # the checkpoint's 4 and the resumed steps
    assert np.allclose(state.loss_history, full.loss_history, rtol=1e-6, atol=0)
    diff = max_diff(params_of(resumed), params_of(whole))
    print(f"resumed vs uninterrupted: max |Δparam| {diff:.2e}")
    assert diff <= 1e-6
    assert max_diff(params_of(resumed), params_of(generator(cfg))) > 1e-3  # training changed them


def test_resume_with_another_configuration_is_refused(zoo, tmp_path):
    cfg = config(tmp_path)
    train(generator(cfg), dataset(zoo, cfg), cfg, show_progress=False, stop_after=4)
    with pytest.raises(ValueError, match=r"configuration changed \(learning_rate: 0.015 -> 0.001\)"):
        train(generator(cfg), dataset(zoo, cfg), cfg.replace(learning_rate=1e-3), show_progress=False)
    other_dir = cfg.replace(output_dir=str(tmp_path / "elsewhere"), checkpoint_every=2)  # allowed changes
    assert train(generator(cfg), dataset(zoo, cfg), other_dir, show_progress=False).step == STEPS


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(zoo, tmp_path):
    cfg = config(tmp_path, num_steps=30)
    ds = dataset(zoo, cfg)
    good = ds.teachers.B["q_proj"][3].copy()
    ds.teachers.B["q_proj"][3] = np.nan  # one poisoned teacher: the first batch that holds it diverges
    with pytest.raises(TrainingDiverged, match=r"step (\d+): the loss is nan.*last good checkpoint is step (\d+)") as e:
        train(generator(cfg), ds, cfg, show_progress=False)
    import re

    from llgbm_jax.utils.checkpointing import TrainCheckpointer

    bad_step, saved = map(int, re.search(r"step (\d+): .*step (\d+) in", str(e.value)).groups())
    assert saved == (TrainCheckpointer(cfg.checkpoint_dir).latest_step() or 0) == 4 * ((bad_step - 1) // 4)
    ds.teachers.B["q_proj"][3] = good  # the data fixed, the run resumes from the good checkpoint
    state = train(generator(cfg), ds, cfg, show_progress=False)
    assert state.step == 30 and np.all(np.isfinite(state.loss_history))


def test_gradient_accumulation_equals_one_large_batch(zoo, tmp_path):
    one = config(tmp_path, batch_size=4, num_steps=2, warmup_steps=1, checkpoint_dir=str(tmp_path / "a"))
    two = one.replace(batch_size=2, gradient_accumulation_steps=2, checkpoint_dir=str(tmp_path / "b"))
    ds = dataset(zoo, one)
    g1, g2 = generator(one), generator(one)
    s1 = train(g1, ds, one.replace(num_steps=2), show_progress=False, stop_after=1)
    s2 = train(g2, ds, two.replace(num_steps=2), show_progress=False, stop_after=1)
    assert s1.loss_history[0] == pytest.approx(s2.loss_history[0], rel=1e-5)
    assert s1.grad_norm_history[0] == pytest.approx(s2.grad_norm_history[0], rel=1e-4)
    # AdamW's first update is lr·g/(|g| + eps): exact for every element except those whose gradient is
    # of the order of eps, where float rounding of the two summation orders is amplified up to lr·δg/eps.
    # A wrong accumulation (one micro-batch only, a sum for a mean under clipping) moves most elements.
    lr = s1.lr_history[0]
    diff = np.concatenate([np.abs(np.asarray(a - b)).ravel() for a, b in
                           zip(jax.tree_util.tree_leaves(params_of(g1)), jax.tree_util.tree_leaves(params_of(g2)))])
    assert np.mean(diff > 1e-3 * lr) < 1e-3 and diff.max() < 0.2 * lr


def test_evaluate_reports_delta_w_metrics_that_match_dense(zoo, tmp_path):
    cfg = config(tmp_path, num_steps=30, warmup_steps=2)
    gen = generator(cfg)
    train(gen, dataset(zoo, cfg), cfg, show_progress=False)
    held = dataset(zoo, cfg, "eval")
    res = evaluate(gen, held, cfg)
    assert res["n_adapters"] == 2 and res["adapters"] == held.splits.heldout_adapters
    batch = held.collate_fn([held.sample(i) for i in range(len(held))])
    from llgbm_jax.generator.training import generate_batch

    pred = generate_batch(gen, batch)
    for m, got in res["delta_w"]["per_module"].items():
        p, t = np.asarray(delta_w(pred, m), np.float64), np.asarray(delta_w(batch["teacher"], m), np.float64)
        cos = np.sum(p * t, axis=(1, 2, 3)) / np.sqrt(np.sum(p * p, axis=(1, 2, 3)) * np.sum(t * t, axis=(1, 2, 3)))
        rel = np.sqrt(np.sum((p - t) ** 2, axis=(1, 2, 3)) / np.sum(t * t, axis=(1, 2, 3)))
        assert got["cosine"] == pytest.approx(cos.mean(), rel=1e-4, abs=1e-6)
        assert got["relative_error"] == pytest.approx(rel.mean(), rel=1e-4)
    zero = jax.tree_util.tree_map(jnp.zeros_like, pred)
    m0 = delta_w_metrics(zero, batch["teacher"])
    assert m0["relative_error"] == pytest.approx(1.0) and m0["cosine"] == 0.0


def test_a_checkpoint_older_than_a_config_field_resumes_at_its_default():
    """A field added after a run was checkpointed counts at its default, so the run still resumes; another value
    of it is a change."""
    from llgbm_jax.generator.training import _config_changes

    cfg = TrainingConfig()
    saved = {k: v for k, v in cfg.to_dict().items() if k not in ("weight_loss", "lambda_sft")}
    assert _config_changes(saved, cfg) == []
    assert _config_changes(saved, cfg.replace(lambda_sft=1.0)) == ["lambda_sft: 0.0 -> 1.0"]


def test_schedule_of_a_one_step_run():
    """A run of one step (the ablation's same-budget comparison can ask for one) has a schedule: warm-up from
    0.1·lr, peak lr after it; zero warm-up steps count as one."""
    from llgbm_jax.utils.optim import warmup_cosine

    for warmup in (0, 1):
        schedule = warmup_cosine(1e-3, warmup, 1)
        assert float(schedule(0)) == pytest.approx(1e-4) and float(schedule(1)) == pytest.approx(1e-3)
