"""`LoRA` as a pytree: config and helpers, functional application in the decoder, per-row adapters,
gradients (non-zero everywhere, and equal to finite differences), `FunctionalLoRA`, the native file.

Tolerances (float32 unless stated): per-row adapters vs each row alone 1e-5; zero adapters and B = 0
give the base model bit for bit; finite differences in float64 (the decoder's norms and softmax stay
float32, which bounds the agreement) within 1e-3·(1 + |directional derivative|).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llgbm_jax import FunctionalLoRA
from llgbm_jax.base import decoder
from llgbm_jax.base.model import load_base_model
from llgbm_jax.lora.adapter import (ALL_MODULES, LoRA, LoRAConfig, check_lora, delta_w, init_lora, load_lora, save_lora,
                                    stack_loras, unstack_loras, zeros_lora)

from conftest import max_diff_real, padded_batch


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """Our `BaseModel` for each tiny family."""
    return load_base_model(tiny_model[2])


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """One tiny Llama for the family-independent checks."""
    from conftest import make_tiny_torch_model

    folder = tmp_path_factory.mktemp("tiny-llama-lora")
    make_tiny_torch_model("llama", seed=3).save_pretrained(folder)
    return load_base_model(str(folder))


def batch(model, lengths=(7, 4, 1), width=7, side="left", seed=0):
    return padded_batch(np.random.RandomState(seed), list(lengths), width, model.config.vocab_size, side)


# --- config and helpers ---------------------------------------------------------------------------

def test_config_normalises_and_validates():
    c = LoRAConfig(8, 16, ["v_proj", "q_proj"])
    assert c.target_modules == ("q_proj", "v_proj") and hash(c) == hash(LoRAConfig(8, 16, ("q_proj", "v_proj")))
    assert c.scaling == 2.0 and c.is_uniform and c.max_rank == 8
    assert LoRAConfig(8, 16, use_rslora=True).scaling == pytest.approx(16 / math.sqrt(8))
    with pytest.raises(ValueError, match="lm_head"):
        LoRAConfig(8, 16, ("q_proj", "lm_head"))
    with pytest.raises(ValueError, match="positive"):
        LoRAConfig(0, 16)
    with pytest.raises(ValueError, match="k_proj.*not in target_modules"):
        LoRAConfig(8, 16, ("q_proj",), layer_ranks={"k_proj": (4, 4)})
    # per-layer exceptions equal to the defaults are dropped, so equal adapters have equal configs
    assert LoRAConfig(4, 8, layer_ranks={"q_proj": (4, 4)}) == LoRAConfig(4, 8)


def test_per_layer_ranks_and_alphas_give_per_slot_scales():
    c = LoRAConfig(4, 8, ("q_proj", "v_proj"), layer_ranks={"q_proj": (2, 6)}, layer_alphas={"v_proj": (3, 8)})
    assert c.max_rank == 6 and not c.is_uniform
    np.testing.assert_allclose(c.scales("q_proj", 2), [[4, 4, 0, 0, 0, 0], [8 / 6] * 6])
    np.testing.assert_allclose(c.scales("v_proj", 2), [[0.75] * 4 + [0, 0], [2] * 4 + [0, 0]])
    with pytest.raises(ValueError, match="per-layer"):
        c.scaling
    rs = LoRAConfig(4, 8, ("q_proj",), use_rslora=True, layer_ranks={"q_proj": (2, 4)})
    np.testing.assert_allclose(rs.scales("q_proj", 2)[:, 0], [8 / math.sqrt(2), 8 / math.sqrt(4)])


def test_init_zeros_delta_w_num_params(llama):
    mc = llama.config
    cfg = LoRAConfig(4, 8, ("q_proj", "down_proj"), layer_ranks={"q_proj": (2, 4)})
    lora = init_lora(jax.random.PRNGKey(0), mc, cfg)
    assert lora.A["q_proj"].shape == (2, 4, 64) and lora.B["down_proj"].shape == (2, 64, 4)
    for m in lora.modules:  # PEFT's init: A ~ U(±1/sqrt(in)), B = 0
        bound = 1 / math.sqrt(mc.module_shapes[m][1])
        assert 0.5 * bound < float(jnp.abs(lora.A[m]).max()) <= bound and not jnp.any(lora.B[m])
    assert not jnp.any(lora.A["q_proj"][0, 2:])  # rank padding of layer 0 is zero
    rb = init_lora(jax.random.PRNGKey(0), mc, cfg, random_b=True)
    assert jnp.all(jnp.any(rb.B["down_proj"] != 0, axis=(-1, -2))) and not jnp.any(rb.B["q_proj"][0, :, 2:])
    # ΔW = scaling·B·A per layer; padding is ignored even when it is not zero
    garbage = LoRA(A={**rb.A, "q_proj": rb.A["q_proj"].at[0, 2:].set(5.0)}, B=rb.B, config=cfg)
    for l in range(2):
        s = cfg.scales("q_proj", 2)[l, 0]
        r = cfg.ranks("q_proj", 2)[l]
        want = s * rb.B["q_proj"][l, :, :r] @ rb.A["q_proj"][l, :r]
        np.testing.assert_allclose(delta_w(garbage, "q_proj", l), want, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(delta_w(garbage, "q_proj")[l], want, rtol=1e-6, atol=1e-7)
    (o_q, i_q), (o_d, i_d) = mc.module_shapes["q_proj"], mc.module_shapes["down_proj"]
    assert rb.num_params() == (2 + 4) * (o_q + i_q) + 2 * 4 * (o_d + i_d)
    z = zeros_lora(mc, LoRAConfig(8, 16))
    assert set(z.modules) == set(ALL_MODULES) and z.batch_shape == () and z.num_layers == mc.num_layers


def test_stack_unstack_and_check(llama):
    mc = llama.config
    cfg = LoRAConfig(4, 8)
    loras = [init_lora(jax.random.PRNGKey(i), mc, cfg, random_b=True) for i in range(3)]
    stacked = stack_loras(loras)
    assert stacked.batch_shape == (3,) and stacked.num_params() == loras[0].num_params()
    for a, b in zip(unstack_loras(stacked), loras):
        assert all(jnp.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    with pytest.raises(ValueError, match="different configs"):
        stack_loras([loras[0], init_lora(jax.random.PRNGKey(0), mc, LoRAConfig(4, 16))])
    bad = LoRA(A={**loras[0].A, "k_proj": loras[0].A["k_proj"][:, :, :-1]}, B=loras[0].B, config=cfg)
    with pytest.raises(ValueError, match="k_proj"):
        check_lora(bad, mc)
    ids, mask = batch(llama)
    with pytest.raises(ValueError, match="k_proj"):
        decoder.forward(llama.params, mc, ids, mask, bad)
    with pytest.raises(ValueError, match="batch"):
        decoder.forward(llama.params, mc, ids[:2], mask[:2], stacked)


# --- the decoder with a LoRA ----------------------------------------------------------------------

def test_zero_adapters_leave_the_model_unchanged(llama):
    ids, mask = batch(llama)
    base = np.asarray(llama.logits(ids, mask))
    np.testing.assert_array_equal(llama.logits(ids, mask, zeros_lora(llama.config, LoRAConfig(8, 16))), base)
    np.testing.assert_array_equal(
        llama.logits(ids, mask, init_lora(jax.random.PRNGKey(0), llama.config, LoRAConfig(8, 16))), base)
    changed = llama.logits(ids, mask, init_lora(jax.random.PRNGKey(0), llama.config, LoRAConfig(8, 16), random_b=True))
    assert max_diff_real(changed, base, mask) > 1e-2


def test_scaling_reaches_every_projection(llama):
    """Each module and layer gets its own scaling: per-(module, layer) alphas equal a uniform adapter
    whose B is multiplied by the same factors (the output is linear in scaling·B)."""
    ids, mask = batch(llama)
    L = llama.config.num_layers
    lora = init_lora(jax.random.PRNGKey(1), llama.config, LoRAConfig(4, 8), random_b=True, b_std=0.05)
    factor = {m: [(1 + i / 7) * (1 + l) for l in range(L)] for i, m in enumerate(ALL_MODULES)}
    per_layer = LoRA(A=lora.A, B=lora.B, config=LoRAConfig(4, 8, layer_alphas={
        m: tuple(8 * f for f in fs) for m, fs in factor.items()}))
    scaled_b = LoRA(A=lora.A, B={m: lora.B[m] * jnp.asarray(factor[m])[:, None, None] for m in ALL_MODULES},
                    config=lora.config)
    got, want = llama.logits(ids, mask, per_layer), llama.logits(ids, mask, scaled_b)
    assert max_diff_real(got, want, mask) < 1e-5
    assert max_diff_real(got, llama.logits(ids, mask, lora), mask) > 1e-3


def test_rank_padding_is_ignored(llama):
    """Per-layer ranks: a padded adapter equals the same adapter at uniform rank; padding values don't matter."""
    mc = llama.config
    modules = ("q_proj", "up_proj")
    small = init_lora(jax.random.PRNGKey(2), mc, LoRAConfig(2, 8, modules), random_b=True, b_std=0.1)
    cfg = LoRAConfig(4, 8, modules, layer_ranks={m: (2, 2) for m in modules})  # rank 2 (alpha 8), padded to 4
    pad = lambda x, axis: jnp.concatenate([x, 7.0 * jnp.ones_like(x)], axis=axis)  # non-zero garbage padding
    padded = LoRA(A={m: pad(small.A[m], -2) for m in modules}, B={m: pad(small.B[m], -1) for m in modules},
                  config=cfg)
    ids, mask = batch(llama)
    assert max_diff_real(llama.logits(ids, mask, padded), llama.logits(ids, mask, small), mask) < 1e-5


def test_gauge_transform_keeps_delta_w_and_changes_the_factors(llama):
    """(B G⁻¹, G A) per adapter, layer and module: every ΔW within 1e-6 relative, the factors far from the old
    ones; per-layer ranks keep their zero padding; two keys give two gauges; a batch gets a G per adapter."""
    from llgbm_jax.lora import gauge_transform

    mc = llama.config
    cfg = LoRAConfig(4, 8.0, ("q_proj", "down_proj"), layer_ranks={"down_proj": (2, 4)})
    loras = [init_lora(jax.random.PRNGKey(i), mc, cfg, random_b=True, b_std=0.1) for i in range(2)]
    for m, r in (("down_proj", 2),):  # zero padding as PEFT loading makes it
        loras = [LoRA(A={**x.A, m: x.A[m].at[0, r:].set(0)}, B={**x.B, m: x.B[m].at[0, :, r:].set(0)}, config=cfg)
                 for x in loras]
    batch_ = stack_loras(loras)
    moved = gauge_transform(batch_, jax.random.PRNGKey(7))
    assert moved.config == batch_.config
    for m in cfg.target_modules:
        for layer in range(mc.num_layers):
            before, after = np.asarray(delta_w(batch_, m, layer)), np.asarray(delta_w(moved, m, layer))
            assert np.abs(after - before).max() <= 1e-6 * np.abs(before).max()
        rel = np.linalg.norm(moved.A[m] - batch_.A[m]) / np.linalg.norm(batch_.A[m])
        assert rel > 0.3 and np.linalg.norm(moved.B[m] - batch_.B[m]) / np.linalg.norm(batch_.B[m]) > 0.3
    assert (not np.asarray(moved.A["down_proj"][:, 0, 2:]).any()
            and not np.asarray(moved.B["down_proj"][:, 0, :, 2:]).any())
    assert np.asarray(moved.A["down_proj"][:, 1, 2:]).any()  # rank 4 in layer 1: all of it moves
    # Each adapter of a batch has its own G (two copies of one adapter move apart); another key, another gauge.
    twins = gauge_transform(stack_loras([loras[0], loras[0]]), jax.random.PRNGKey(7))
    assert np.abs(np.asarray(twins.A["q_proj"][0]) - np.asarray(twins.A["q_proj"][1])).max() > 1e-2
    other = gauge_transform(batch_, jax.random.PRNGKey(8))
    assert np.abs(np.asarray(other.A["q_proj"]) - np.asarray(moved.A["q_proj"])).max() > 1e-2
    assert gauge_transform(loras[0], jax.random.PRNGKey(7)).batch_shape == ()


@pytest.mark.parametrize("side", ["left", "right"])
def test_per_row_adapters_equal_each_row_alone(tiny, side):
    """A batch with adapter i on row i equals running row i alone with adapter i (≤ 1e-5)."""
    ids, mask = batch(tiny, lengths=(7, 3, 5), side=side)
    cfg = LoRAConfig(4, 8, use_rslora=True)
    loras = [init_lora(jax.random.PRNGKey(10 + i), tiny.config, cfg, random_b=True, b_std=0.1) for i in range(3)]
    together = np.asarray(tiny.logits(ids, mask, stack_loras(loras)))
    for i, lora in enumerate(loras):
        alone = np.asarray(tiny.logits(ids[i:i + 1], mask[i:i + 1], lora))
        assert max_diff_real(together[i:i + 1], alone, mask[i:i + 1]) <= 1e-5
    # and the rows really differ from a shared adapter
    shared = np.asarray(tiny.logits(ids, mask, loras[0]))
    assert max_diff_real(together[1:], shared[1:], mask[1:]) > 1e-3
    np.testing.assert_allclose(together[0], shared[0], atol=1e-5)


def test_generate_with_per_row_adapters(llama):
    """The KV-cache loop takes the same LoRA batch (row i decodes with adapter i)."""
    ids, mask = batch(llama, lengths=(5, 3), width=5)
    cfg = LoRAConfig(4, 8)
    loras = [init_lora(jax.random.PRNGKey(20 + i), llama.config, cfg, random_b=True, b_std=0.3) for i in range(2)]
    both = llama.generate(ids, mask, 6, stack_loras(loras))
    for i, lora in enumerate(loras):
        np.testing.assert_array_equal(both[i], llama.generate(ids[i:i + 1], mask[i:i + 1], 6, lora)[0])


# --- gradients ------------------------------------------------------------------------------------

def _loss_fn(model, ids, mask, weights):
    return lambda lora: jnp.sum(decoder.forward(model.params, model.config, ids, mask, lora)[0] * weights)


def test_every_factor_gets_a_gradient(tiny):
    """jax.grad through the whole decoder: a non-zero gradient for every A and B of every layer."""
    ids, mask = batch(tiny)
    weights = np.random.RandomState(1).randn(*ids.shape, tiny.config.hidden_size).astype(np.float32)
    lora = init_lora(jax.random.PRNGKey(0), tiny.config, LoRAConfig(4, 8), random_b=True, b_std=0.05)
    grads = jax.jit(jax.grad(_loss_fn(tiny, ids, mask, weights)))(lora)
    assert isinstance(grads, LoRA) and grads.config == lora.config  # metadata stays static
    for f in "AB":
        for m in ALL_MODULES:
            g = np.asarray(getattr(grads, f)[m])
            assert g.shape == getattr(lora, f)[m].shape and np.all(np.isfinite(g))
            per_layer = np.abs(g).reshape(g.shape[0], -1).max(-1)
            assert np.all(per_layer > 0), (f, m, per_layer)


def test_gradient_with_a_batch_of_adapters(llama):
    """With one adapter per row, adapter i's gradient is row i's gradient alone."""
    ids, mask = batch(llama)
    weights = np.random.RandomState(1).randn(*ids.shape, llama.config.hidden_size).astype(np.float32)
    loras = [init_lora(jax.random.PRNGKey(i), llama.config, LoRAConfig(2, 4), random_b=True) for i in range(3)]
    grad = jax.jit(lambda l, i, m, w: jax.grad(_loss_fn(llama, i, m, w))(l))
    grads = grad(stack_loras(loras), ids, mask, weights)
    assert grads.batch_shape == (3,)
    for i in range(3):
        gi = grad(loras[i], ids[i:i + 1], mask[i:i + 1], weights[i:i + 1])
        for a, b in zip(jax.tree_util.tree_leaves(unstack_loras(grads)[i]), jax.tree_util.tree_leaves(gi)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("per_row", [False, True])
def test_lora_term_vjp_equals_autodiff(per_row):
    """The decoder's hand-written LoRA backward equals jax's autodiff of the plain formula."""
    rng = np.random.RandomState(0)
    p = "b" if per_row else ""
    x = rng.randn(3, 5, 16).astype(np.float32)
    a = rng.randn(*((3,) if per_row else ()), 4, 16).astype(np.float32)
    b = rng.randn(*((3,) if per_row else ()), 12, 4).astype(np.float32)
    scales = np.array([0.5, 2.0, 1.0, 0.0], np.float32)
    g = rng.randn(3, 5, 12).astype(np.float32)
    plain = lambda x, a, b, s: jnp.einsum(f"bsr,{p}or->bso", jnp.einsum(f"bsi,{p}ri->bsr", x, a) * s, b)
    ours = lambda x, a, b, s: decoder._lora_term(per_row, x, a, b, s)
    np.testing.assert_allclose(ours(x, a, b, scales), plain(x, a, b, scales), rtol=1e-6, atol=1e-5)
    want = jax.vjp(plain, x, a, b, scales)[1](g)
    got = jax.vjp(ours, x, a, b, scales)[1](g)
    for w, h in zip(want, got):
        np.testing.assert_allclose(h, w, rtol=1e-5, atol=1e-4)


def test_gradient_matches_finite_differences(llama):
    """Central differences (float64, eps 1e-2, a unit direction per factor) vs jax.grad."""
    ids, mask = batch(llama, lengths=(6, 4), width=6)
    weights = np.random.RandomState(1).randn(*ids.shape, llama.config.hidden_size)
    rng = np.random.RandomState(2)
    eps = 1e-2
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), llama.params)
        model = type(llama)(config=llama.config, params=params, tokenizer=None)
        lora = init_lora(jax.random.PRNGKey(0), llama.config, LoRAConfig(4, 8), random_b=True, b_std=0.1,
                         dtype=jnp.float64)
        f = jax.jit(_loss_fn(model, ids, mask, weights))
        grads = jax.grad(f)(lora)
        for factor in "AB":
            for m in ALL_MODULES:
                v = rng.randn(*getattr(lora, factor)[m].shape)
                v /= np.linalg.norm(v)

                def shifted(step):
                    d = {**getattr(lora, factor), m: getattr(lora, factor)[m] + step * v}
                    return LoRA(**{"A": lora.A, "B": lora.B, factor: d}, config=lora.config)

                fd = float(f(shifted(eps)) - f(shifted(-eps))) / (2 * eps)
                analytic = float(jnp.vdot(getattr(grads, factor)[m], v))
                assert abs(fd - analytic) <= 1e-3 * (1 + abs(analytic)), (factor, m, fd, analytic)


# --- FunctionalLoRA and the native file -----------------------------------------------------------

def test_functional_lora_is_the_decoder(llama):
    fl = FunctionalLoRA(llama, lora_rank=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    assert fl.config == LoRAConfig(4, 8, ("q_proj", "v_proj")) and fl.scaling == 2.0
    ids, mask = batch(llama)
    lora = fl.init(jax.random.PRNGKey(0), random_b=True)
    np.testing.assert_array_equal(fl.forward_with_lora(lora, ids, mask), llama.logits(ids, mask, lora))
    hidden = fl.forward_with_lora(lora, ids, mask, return_hidden=True)
    np.testing.assert_array_equal(hidden, llama.hidden_states(ids, mask, lora))
    assert hidden.shape == (*ids.shape, llama.config.hidden_size)
    np.testing.assert_array_equal(fl.forward_with_lora(fl.zeros(), ids, mask), llama.logits(ids, mask))
    g = jax.grad(lambda l: jnp.sum(fl.forward_with_lora(l, ids, mask, return_hidden=True) ** 2))(lora)
    assert float(jnp.abs(g.A["q_proj"]).max()) > 0


def test_native_file_round_trip(llama, tmp_path):
    cfg = LoRAConfig(4, 8, ("k_proj", "gate_proj"), use_rslora=True, layer_ranks={"k_proj": (1, 4)},
                     layer_alphas={"gate_proj": (2.5, 8)})
    loras = stack_loras([init_lora(jax.random.PRNGKey(i), llama.config, cfg, random_b=True) for i in range(2)])
    back = load_lora(save_lora(loras, str(tmp_path / "x.safetensors")))
    assert back.config == cfg and back.batch_shape == (2,)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(loras)):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_lora(str(tmp_path / "bad.safetensors"))


def test_onednn_matmuls_give_the_same_per_row_gradients(llama):
    """Loss and LoRA gradients (per-row adapters) compiled with oneDNN dots equal the default build."""
    from llgbm_jax.base.cpu_matmul import compile_with_onednn

    ids, mask = batch(llama)
    weights = np.random.RandomState(1).randn(*ids.shape, llama.config.hidden_size).astype(np.float32)
    lora = stack_loras([init_lora(jax.random.PRNGKey(i), llama.config, LoRAConfig(2, 4), random_b=True)
                        for i in range(3)])
    fn = jax.value_and_grad(_loss_fn(llama, ids, mask, weights))
    (v0, g0), (v1, g1) = jax.jit(fn)(lora), compile_with_onednn(fn, lora)(lora)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
