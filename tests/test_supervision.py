"""The supervision modes of the ablation (`llgbm_jax.ablations.MODES`): raw factors, ΔW, behaviour, both, end to
end (SFT: the generated adapter applied in the decoder, cross-entropy on the tasks' answers) and SFT + ΔW. Each
trains a tiny generator for a few steps on a tiny model (SmolLM2's tokenizer, random weights) through the real
set-up (`setup_base_components`) and its loss falls; the SFT term's gradient equals finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llgbm_jax.ablations import MODES, mode_config, setup_base_components
from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.generator.losses import DeltaInputs, SFTLoss
from llgbm_jax.generator.model import create_generator
from llgbm_jax.generator.training import split_generator, train

from test_dataset import write_zoo

TASKS = ("fam_add_2", "fam_word_2", "fam_snake_case")


@pytest.fixture(scope="module")
def components(tiny_smollm2_vocab, tmp_path_factory):
    _, tiny = tiny_smollm2_vocab
    root = tmp_path_factory.mktemp("supervision")
    zoo = write_zoo(root / "zoo", tasks=TASKS, steps=(10, 20), model_config=tiny.config)
    (root / "no-data").mkdir()
    cfg = TrainingConfig(num_steps=8, warmup_steps=1, batch_size=2, lora_rank=4, lora_alpha=8.0, learning_rate=1e-2,
                         generator_hidden=32, embedding_dim=8, num_probes=4, max_probe_length=64, delta_batch_probes=4,
                         num_prompts_per_adapter=4, sft_rows=2, sft_max_seq_len=64, teacher_checkpoints="all",
                         zoo_dir=zoo, data_dir=str(root / "no-data"),  # probes from the family, as with no data
                         output_dir=str(root / "run"), delta_cache_dir=str(root / "cache" / "deltas"),
                         embedding_cache_dir=str(root / "cache" / "embeddings"))
    comp = setup_base_components(None, cfg, base_model=tiny, show_progress=False)
    return comp, comp.sft_data(), root


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_trains_and_its_loss_falls(components, mode):
    comp, sft, root = components
    cfg = mode_config(comp.config, mode).replace(checkpoint_dir=str(root / f"ckpt-{mode}"))
    gen = create_generator(cfg, 0, model_config=comp.base_model.config)
    needs_base = cfg.lambda_delta > 0 or cfg.lambda_sft > 0
    state = train(gen, comp.dataset, cfg, model_config=comp.base_model.config, show_progress=False,
                  delta=comp.delta_inputs if needs_base else None, sft=sft if cfg.lambda_sft > 0 else None)
    loss = state.loss_history
    assert len(loss) == 8 and all(np.isfinite(loss))
    assert np.mean(loss[-3:]) < np.mean(loss[:3]), loss  # it learns
    active = ({"loss_weight"} | ({"loss_delta"} if cfg.lambda_delta else set())
              | ({"loss_sft"} if cfg.lambda_sft else set()))
    assert set(state.term_histories) == active
    terms = {t: h[0] for t, h in state.term_histories.items()}  # the total is the weighted sum of its terms
    weighted = (cfg.lambda_weight * terms["loss_weight"] + cfg.lambda_delta * terms.get("loss_delta", 0.0)
                + cfg.lambda_sft * terms.get("loss_sft", 0.0))
    assert loss[0] == pytest.approx(weighted, rel=1e-5)


def test_sft_needs_its_examples(components):
    comp, _, root = components
    cfg = mode_config(comp.config, "sft").replace(checkpoint_dir=str(root / "ckpt-refused"))
    gen = create_generator(cfg, 0, model_config=comp.base_model.config)
    with pytest.raises(ValueError, match="lambda_sft > 0 needs the tasks' examples"):
        train(gen, comp.dataset, cfg, model_config=comp.base_model.config, show_progress=False)
    with pytest.raises(KeyError, match="no examples of task 'fam_add_5'"):
        components[1].batch(["fam_add_5"], 0)


def test_sft_rows_are_the_adapters_own_tasks_and_deterministic(components):
    comp, sft, _ = components
    rows = sft.batch(["fam_add_2", "fam_word_2"], step=3)
    assert rows["ids"].shape == (2, 2, sft.width) and rows["target_ids"].shape[:2] == (2, 2)
    again = sft.batch(["fam_add_2", "fam_word_2"], step=3)
    assert all(np.array_equal(rows[k], again[k]) for k in rows)
    tok = comp.base_model.tokenizer
    first = tok.decode(rows["ids"][0, 0][rows["mask"][0, 0] > 0])
    assert "Add 2" in first or "add 2" in first.lower()  # an fam_add_2 example for the fam_add_2 adapter
    assert not np.array_equal(sft.batch(["fam_add_2"], step=4)["ids"], rows["ids"][:1])


def test_sft_gradient_equals_finite_differences(components):
    """d/dε of the SFT loss of the generated adapters along a direction of the generator's parameters (central
    differences, ε = 1e-2, float32) equals the gradient's projection within 0.5% (seen: 0.16%; at ε = 3e-2 1.4%,
    the O(ε²) truncation, so the gradient itself is right)."""
    comp, sft, _ = components
    mc = comp.base_model.config
    cfg = mode_config(comp.config, "sft")
    gen = create_generator(cfg, 0, model_config=mc)
    batch = comp.dataset.collate_fn([comp.dataset.sample(i, 0) for i in range(2)])
    cond = jnp.asarray(batch["condition"])
    rows = {k: jnp.asarray(v) for k, v in sft.batch([comp.dataset.adapters[i].task for i in batch["index"]], 0).items()}
    graphdef, params, rest = split_generator(gen)
    inputs = DeltaInputs(comp.base_model.params, None, None, None)
    loss = SFTLoss(mc, remat=False)

    def f(p):
        return loss(_apply(graphdef, rest, p, cond), rows, inputs)

    grad = jax.grad(f)(params)
    unit = lambda t: jax.tree_util.tree_map(lambda x: x / jnp.sqrt(sum(jnp.sum(y * y) for y in
                                                                          jax.tree_util.tree_leaves(t))), t)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    noise = jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    # Half the gradient's direction, half a random one: a large enough change of the loss for float32 differences.
    v = unit(jax.tree_util.tree_map(jnp.add, unit(grad), unit(noise)))
    eps = 1e-2
    shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, v)
    numeric = (float(f(shift(eps))) - float(f(shift(-eps)))) / (2 * eps)
    analytic = float(sum(jnp.sum(g * d) for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(v))))
    print(f"directional derivative: analytic {analytic:.6g}, finite differences {numeric:.6g}")
    assert abs(analytic) > 1e-3
    assert numeric == pytest.approx(analytic, rel=5e-3)


def _apply(graphdef, rest, params, cond):
    from flax import nnx

    from llgbm_jax.generator.training import _condition

    gen = nnx.merge(graphdef, params, rest)
    return gen(_condition(gen, {"condition": cond}))


def test_budget_steps_are_the_budget_over_the_modes_timed_step():
    """Every seed trains a mode for the budget (default: `steps` steps of delta_w) over the mode's timed step."""
    from llgbm_jax.ablations import AblationConfig
    from llgbm_jax.evaluation.supervision import budget_steps

    seconds = {"delta_w": 0.7, "sft": 5.6}
    abl = AblationConfig(modes=("delta_w", "sft"), seeds=(0, 1), steps=400)
    assert budget_steps(seconds, abl, "sft") == 50 and budget_steps(seconds, abl, "delta_w") == 400
    assert budget_steps(seconds, AblationConfig(modes=("sft",), budget_seconds=56.0), "sft") == 10
    assert budget_steps(seconds, AblationConfig(modes=("sft",), budget_seconds=1.0), "sft") == 1
