"""The LoRA generator: ΔW = 0 at init, shapes, gradients, fitting teachers, conditions, save/load."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llgbm_jax.base.config import ModelConfig
from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.generator.losses import DeltaWLoss
from llgbm_jax.generator.model import (CONFIG_FILE, WEIGHTS_FILE, FittedStat, LoRAGenerator, create_generator,
                                       generate_lora, generator_fn, load_generator, save_generator)
from llgbm_jax.lora.adapter import ALL_MODULES, LoRA, LoRAConfig, check_lora

TINY = ModelConfig("llama", vocab_size=160, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=16)
SMOLLM2 = ModelConfig("llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                      num_kv_heads=3, head_dim=64)
COND = 32
SMALL = TrainingConfig(lora_rank=4, lora_alpha=8.0, generator_hidden=48, generator_layers=2, embedding_dim=8)

generate = nnx.jit(lambda gen, cond: gen(cond))  # compiled once per generator structure and input shape


def tiny_generator(config=SMALL, **kw) -> LoRAGenerator:
    return LoRAGenerator(TINY, LoRAConfig(config.lora_rank, config.lora_alpha, config.target_modules),
                         cond_dim=COND, hidden=config.generator_hidden, trunk_layers=config.generator_layers,
                         embedding_dim=config.embedding_dim, rngs=nnx.Rngs(0), **kw)


def conditions(n, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, COND))


@pytest.fixture(scope="module")
def gen0():
    """The tiny generator (all 7 modules). Tests that change it work on `nnx.clone(gen0)`."""
    return nnx.jit(tiny_generator)()  # one compiled initialisation: faster than op by op


@pytest.fixture(scope="module")
def gen3():
    """A tiny generator for 3 of the 7 modules."""
    return nnx.jit(lambda: tiny_generator(SMALL.replace(target_modules=("q_proj", "v_proj", "down_proj"))))()


def random_model_params(config: ModelConfig, seed: int = 0) -> dict:
    """Random decoder parameters (norm weights near 1) in the layout `decoder.forward` takes."""
    from llgbm_jax.base.state_dict import expected_shapes

    rng = np.random.RandomState(seed)
    draw = lambda k, s: ((1.0 if "norm" in k else 0.0) + 0.1 * rng.randn(*s)).astype(np.float32)
    shapes = expected_shapes(config)
    params = {k: jnp.asarray(draw(k, s)) for k, s in shapes["top"].items()}
    params["layers"] = {k: jnp.asarray(draw(k, (config.num_layers, *s))) for k, s in shapes["layer"].items()}
    return params


def test_untrained_generator_leaves_the_base_model_unchanged(gen0):
    """B heads start at zero: every module's ΔW is exactly 0 in every layer, and a tiny decoder's logits with
    the generated (per-row) adapters equal those without; a non-zero B head does change them (so the check
    can fail)."""
    from llgbm_jax.base import decoder

    lora = generate(gen0, conditions(2))
    for m in ALL_MODULES:
        a, b = np.asarray(lora.A[m]), np.asarray(lora.B[m])
        assert a.all() and not (b @ a).any()  # A dense, ΔW = 0 in every layer, for every condition
    params = random_model_params(TINY)
    logits = jax.jit(lambda ids, mask, lora: decoder.logits(params, TINY, ids, mask, lora))
    ids = np.random.RandomState(0).randint(3, 160, (2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    base = np.asarray(logits(ids, mask, None))
    assert np.abs(np.asarray(logits(ids, mask, lora)) - base).max() <= 1e-7
    changed = nnx.clone(gen0)
    changed.b_heads["v_proj"].bias[...] = 0.1
    assert np.abs(np.asarray(logits(ids, mask, generate(changed, conditions(2)))) - base).max() > 1e-3


def test_output_shapes_config_and_init_scale(gen0, gen3):
    """N=3, N=1 and an unbatched condition give float32 adapters of batch shape (3,), (1,), () that fit the
    model, for all 7 modules or 3; the config is the generator's; A's entries have PEFT's scale
    (std 1/sqrt(3·in), as U(±1/sqrt(in)))."""
    cases = [(gen0, conditions(3), (3,)), (gen0, conditions(1), (1,)), (gen0, conditions(1)[0], ()),
             (gen3, conditions(3), (3,))]
    for gen, cond, batch in cases:
        modules = gen.lora_config.target_modules
        lora = generate(gen, cond)
        assert lora.batch_shape == batch and lora.modules == modules
        assert lora.config == LoRAConfig(4, 8.0, modules)
        check_lora(lora, TINY)
        for m in modules:
            out, inp = TINY.module_shapes[m]
            assert lora.A[m].shape == batch + (2, 4, inp) and lora.B[m].shape == batch + (2, out, 4)
            assert lora.A[m].dtype == lora.B[m].dtype == jnp.float32
    lora = generate(gen0, conditions(3))
    for m in ALL_MODULES:
        want = 1 / np.sqrt(3 * TINY.module_shapes[m][1])
        assert abs(np.asarray(lora.A[m]).std() / want - 1) < 0.1, m
    with pytest.raises(ValueError, match="condition shape"):
        gen0(jnp.zeros((2, COND + 1)))


def test_conditions_and_layers_get_their_own_factors(gen0):
    """Different conditions give different A, and so do different layers (no tiling or repeats)."""
    lora = generate(gen0, conditions(2))
    for m in ALL_MODULES:
        a = np.asarray(lora.A[m])
        scale = np.abs(a).mean()
        assert np.abs(a[0] - a[1]).mean() > 0.05 * scale, m  # conditions
        assert np.abs(a[:, 0] - a[:, 1]).mean() > 0.05 * scale, m  # layers


@pytest.fixture(scope="module")
def adam_step(gen0):
    """One jitted Adam step of the (per-module normalised) ΔW loss on ``gen0``'s structure, in the pattern of
    a training step: ``step(params, opt_state, rest, cond, teachers) -> (params, opt_state, grads)``."""
    graphdef = nnx.graphdef(gen0)
    loss_fn = DeltaWLoss(gen0.lora_config.alpha, gen0.lora_config.rank, normalize="module")
    tx = optax.adam(1e-2)  # a step moves the factors by ~0.8·hidden·lr of their scale: hidden 48 here, 512 by default

    @jax.jit
    def step(params, opt_state, rest, cond, teachers):
        apply = generator_fn(graphdef, rest)
        grads = jax.grad(lambda p: loss_fn(apply(p, cond), teachers))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, grads

    return tx, step


def _train(adam_step, gen, cond, teachers, steps):
    """``steps`` Adam steps from ``gen``'s weights; returns ``(params, the gradient before each step)``."""
    tx, step = adam_step
    _, params, rest = nnx.split(gen, nnx.Param, ...)
    opt, grads = tx.init(params), []
    for _ in range(steps):
        params, opt, g = step(params, opt, rest, cond, teachers)
        grads.append(g)
    return params, grads


def _grad_norms(grads) -> dict[str, float]:
    return {"/".join(map(str, path)): float(np.linalg.norm(np.asarray(v[...]))) for path, v in nnx.to_flat_state(grads)}


def _teachers(n, seed=10, config=LoRAConfig(4, 8.0)) -> LoRA:
    """``n`` random teachers stacked (numpy draws: A as PEFT initialises it, B ~ N(0, 0.05²))."""
    rng = np.random.RandomState(seed)
    A, B = {}, {}
    for m in config.target_modules:
        out, inp = TINY.module_shapes[m]
        A[m] = jnp.asarray(rng.uniform(-1, 1, (n, 2, config.rank, inp)) / np.sqrt(inp), jnp.float32)
        B[m] = jnp.asarray(0.05 * rng.randn(n, 2, out, config.rank), jnp.float32)
    return LoRA(A=A, B=B, config=config)


def test_gradient_reaches_every_parameter_after_one_step(gen0, adam_step):
    """At init only the B heads get a gradient (B = 0 hides A and the trunk); after one Adam step of the
    ΔW loss against random teachers every parameter (trunk, embeddings, each head) has one. The condition
    normaliser is not a parameter."""
    _, (g0, g1) = _train(adam_step, gen0, conditions(3), _teachers(3), steps=2)
    n0, n1 = _grad_norms(g0), _grad_norms(g1)
    assert {k for k, v in n0.items() if v > 0} == {k for k in n0 if k.startswith("b_heads/")}
    groups = ("cond_proj/", "layer_emb", "module_emb", "trunk/0/", "trunk/1/", "trunk_norms/", "out_norm/",
              *(f"{h}/{m}/" for h in ("a_heads", "b_heads") for m in ALL_MODULES))
    assert all(any(k.startswith(g) for k in n1) for g in groups)
    assert [k for k, v in n1.items() if not v > 0] == []
    assert not any(k.startswith(("cond_mean", "cond_scale")) for k in n1)
    assert set(dict(nnx.to_flat_state(nnx.state(gen0, FittedStat)))) == {("cond_mean",), ("cond_scale",),
                                                                        ("a_scale",), ("b_scale",)}


def test_fits_three_teachers_from_three_conditions(gen0, adam_step):
    """The basic capability: 40 Adam steps on 3 random teachers with 3 distinct conditions fit each one
    (ΔW cosine > 0.9 for every module), and each condition's ΔW is far from the other teachers' (< 0.5)."""
    gen, teachers, cond = nnx.clone(gen0), _teachers(3), conditions(3)
    gen.fit_condition_normalizer(cond)
    gen.fit_output_scale(teachers)
    params, _ = _train(adam_step, gen, cond, teachers, steps=40)
    nnx.update(gen, params)
    cos = delta_w_cosines(generate(gen, cond), teachers)  # [3 conditions, 3 teachers] per module
    for m, c in cos.items():
        assert (np.diag(c) > 0.9).all() and (c[~np.eye(3, dtype=bool)] < 0.5).all(), (m, c)


def test_output_scale_matches_the_teachers_delta_w_size(gen0):
    """``fit_output_scale``: b_scale = RMS of the teachers' ΔW entries (dense, float64) / (scaling · sqrt(r) ·
    a_scale), whatever the teachers' own scaling; a generated B then has that size once its head is trained."""
    gen, teachers = nnx.clone(gen0), _teachers(4)
    gen.fit_output_scale(teachers)
    for j, m in enumerate(gen.lora_config.target_modules):
        a, b = np.asarray(teachers.A[m], np.float64), np.asarray(teachers.B[m], np.float64)
        rms = np.sqrt(np.mean((teachers.config.scaling * b @ a) ** 2))
        want = rms / (gen.lora_config.scaling * np.sqrt(gen.lora_config.rank) * float(gen.a_scale[j]))
        assert float(gen.b_scale[j]) == pytest.approx(want, rel=1e-5), m
    doubled = LoRA(A=teachers.A, B=teachers.B, config=LoRAConfig(teachers.config.rank, 2 * teachers.config.alpha))
    gen2 = nnx.clone(gen0)
    gen2.fit_output_scale(doubled)  # twice the scaling: twice the ΔW, twice the scale
    np.testing.assert_allclose(np.asarray(gen2.b_scale[...]), 2 * np.asarray(gen.b_scale[...]), rtol=1e-5)
    with pytest.raises(ValueError, match="no 'q_proj' module"):
        gen.fit_output_scale(LoRA(A={k: v for k, v in teachers.A.items() if k != "q_proj"},
                                  B={k: v for k, v in teachers.B.items() if k != "q_proj"},
                                  config=LoRAConfig(8, 16.0, tuple(m for m in ALL_MODULES if m != "q_proj"))))


def delta_w_cosines(pred, teachers) -> dict[str, np.ndarray]:
    """Dense ΔW cosine (over all layers) of every prediction with every teacher, per module (numpy)."""
    def dense(lora, m):
        a, b = np.asarray(lora.A[m], np.float64), np.asarray(lora.B[m], np.float64)
        return (lora.config.scaling * b @ a).reshape(a.shape[0], -1)

    out = {}
    for m in pred.modules:
        p, t = dense(pred, m), dense(teachers, m)
        out[m] = (p @ t.T) / np.outer(np.linalg.norm(p, axis=1), np.linalg.norm(t, axis=1))
    return out


def test_condition_normalizer_standardises(gen0):
    gen = nnx.clone(gen0)
    rng = np.random.RandomState(0)
    c = 0.3 + rng.randn(20, COND) * np.linspace(0.01, 0.1, COND)
    c[:, 0] = 0.5  # a constant feature: its scale is floored, not 0
    gen.fit_condition_normalizer(c)
    std = c.std(0)
    z = (c - np.asarray(gen.cond_mean[...])) / np.asarray(gen.cond_scale[...])
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, 1:].std(0), 1, rtol=1e-4)
    np.testing.assert_allclose(float(gen.cond_scale[0]), 0.1 * std.mean(), rtol=1e-5)
    gen.fit_condition_normalizer(c[:1])  # one condition: nothing to scale by
    assert np.all(np.asarray(gen.cond_scale[...]) == 1)
    with pytest.raises(ValueError, match=r"expected \[N, 32\]"):
        gen.fit_condition_normalizer(c[:, :5])


def _tiny_encoder():
    from llgbm_jax.conditions.text_encoder import EncoderConfig, MiniLMEncoder

    cfg = EncoderConfig(vocab_size=50, hidden_size=COND, num_layers=1, num_heads=2, intermediate_size=48,
                        max_position_embeddings=16, type_vocab_size=2, layer_norm_eps=1e-12)
    return nnx.jit(lambda: MiniLMEncoder(cfg, nnx.Rngs(3)))()


def test_condition_pooling_and_a_jointly_trained_text_encoder(gen0):
    """``condition`` averages the real prompts only; ``condition_from_tokens`` encodes with the attached
    (tiny, random) `MiniLMEncoder`, skips empty prompts, and the encoder's weights are trainable parameters
    that get a gradient."""
    emb = jax.random.normal(jax.random.PRNGKey(0), (2, 3, COND))
    pooled = gen0.condition(emb, jnp.array([[1, 1, 0], [1, 0, 0]]))
    np.testing.assert_allclose(pooled, np.stack([emb[0, :2].mean(0), emb[1, 0]]), rtol=1e-6)
    np.testing.assert_allclose(gen0.condition(emb), emb.mean(1), rtol=1e-6)
    with pytest.raises(ValueError, match="no text encoder"):
        gen0.condition_from_tokens(jnp.zeros((1, 1, 4), jnp.int32), jnp.ones((1, 1, 4), jnp.int32))

    enc = _tiny_encoder()
    gen = nnx.clone(gen0)
    gen.text_encoder = enc
    n_enc = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(enc, nnx.Param)))
    assert gen.num_params() == gen0.num_params() + n_enc
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 50, (2, 3, 6)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 1, 4:] = 0
    mask[1, 2] = 0  # an empty prompt: padding
    graphdef, params, rest = nnx.split(gen, nnx.Param, ...)
    teacher = _teachers(1, seed=7)

    def loss(p):  # on A (B is zero at init, so a ΔW loss has no gradient past the B heads yet)
        g = nnx.merge(graphdef, p, rest)
        cond = g.condition_from_tokens(ids, mask)
        pred = g(cond)
        per_prompt = g.text_encoder(ids.reshape(6, 6), mask.reshape(6, 6)).reshape(2, 3, COND)
        return sum(jnp.sum((pred.A[m] - teacher.A[m]) ** 2) for m in pred.modules), (cond, per_prompt)

    grads, (got, e) = jax.jit(jax.grad(loss, has_aux=True))(params)
    np.testing.assert_allclose(got, np.stack([e[0].mean(0), e[1, :2].mean(0)]), rtol=1e-5, atol=1e-6)
    enc_grads = {k: v for k, v in _grad_norms(grads).items() if k.startswith("text_encoder/")}
    assert len(enc_grads) > 10 and all(v > 0 for v in enc_grads.values())


def test_create_generator_prints_count_and_keeps_its_config(capsys):
    """create_generator prints the count; a frozen text encoder is not attached (conditions are
    precomputed); the TrainingConfig is static graph data: the graphdef hashes, jit and nnx.jit work."""
    gen = create_generator(SMALL, text_encoder=_tiny_encoder(), model_config=TINY)
    n = gen.num_params()
    assert f"generator: {n / 1e6:.1f}M trainable parameters ({n:,})" in capsys.readouterr().out
    assert gen.text_encoder is None and gen.cond_dim == COND and gen.training_config == SMALL
    graphdef, params, rest = nnx.split(gen, nnx.Param, ...)
    hash(graphdef)
    assert nnx.merge(graphdef, params, rest).training_config == SMALL
    assert generate(gen, conditions(2)).batch_shape == (2,)  # (jax.jit of generator_fn: the adam_step fixture)


def test_parameter_count_at_smollm2_shapes():
    """Defaults (hidden 512, 2 trunk layers, embeddings 64, r 8, 7 modules) at SmolLM2-135M shapes: the
    count equals the formula (≈42.6M; the research code's generator had 41.9M). Shapes only, no weights."""
    c = TrainingConfig()
    gen = nnx.eval_shape(lambda: LoRAGenerator(SMOLLM2, LoRAConfig(c.lora_rank, c.lora_alpha), rngs=nnx.Rngs(0)))
    h, e, r, L, d = c.generator_hidden, c.embedding_dim, c.lora_rank, 30, 384
    heads = sum((h + 1) * r * (inp + out) for out, inp in SMOLLM2.module_shapes.values())
    trunk = (d * h + h) + (L + 7) * e + ((h + 2 * e) * h + h) + (h * h + h) + 2 * 2 * h + 2 * h
    assert gen.num_params() == heads + trunk == 42_555_712


def test_save_load_round_trip_and_bad_files(tmp_path):
    gen = create_generator(SMALL, model_config=TINY, seed=3)
    gen.fit_condition_normalizer(np.random.RandomState(4).rand(5, 384) * 0.1 + 0.2)
    gen.b_heads["q_proj"].bias[...] = 0.01  # a non-zero ΔW
    path = save_generator(gen, str(tmp_path / "gen"), SMALL, extra={"step": 7})
    assert os.listdir(tmp_path) == ["gen"] and sorted(os.listdir(path)) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    meta = json.load(open(os.path.join(path, CONFIG_FILE)))
    assert meta["extra"] == {"step": 7} and meta["cond_dim"] == 384 and meta["model_config"]["hidden_size"] == 64

    loaded, config = load_generator(path)
    assert config == SMALL and loaded.training_config == SMALL and loaded.model_config == TINY
    a, b = nnx.to_flat_state(nnx.state(gen)), nnx.to_flat_state(nnx.state(loaded))
    assert [p for p, _ in a] == [p for p, _ in b]
    for (p, x), (_, y) in zip(a, b):
        assert type(x) is type(y) and np.array_equal(np.asarray(x[...]), np.asarray(y[...])), p
    cond = jax.random.normal(jax.random.PRNGKey(0), (2, 384))
    before, after = generate(gen, cond), generate(loaded, cond)
    assert np.asarray(before.B["q_proj"]).any()
    for f in "AB":
        for m, x in getattr(before, f).items():
            np.testing.assert_array_equal(x, getattr(after, f)[m])

    from safetensors.numpy import load_file, save_file

    weights = os.path.join(path, WEIGHTS_FILE)
    tensors = load_file(weights)
    save_file({k: v for k, v in tensors.items() if k != "trunk/1/kernel"}, weights)
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE}: missing tensor 'trunk/1/kernel'"):
        load_generator(path)
    save_file(dict(tensors, **{"a_heads/k_proj/bias": tensors["a_heads/k_proj/bias"][:-1]}), weights)
    with pytest.raises(ValueError, match=r"tensor 'a_heads/k_proj/bias' is float32\[255\], expected float32\[256\]"):
        load_generator(path)
    save_file(dict(tensors, extra=tensors["cond_mean"]), weights)
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\) \['extra'\]"):
        load_generator(path)
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match="missing weights file"):
        load_generator(path)
    with pytest.raises(FileNotFoundError, match="not a saved generator"):
        load_generator(str(tmp_path))


def test_base_adapter_is_added_to_every_generated_adapter(tmp_path):
    """With a base adapter every generated adapter is it plus the correction (ranks concatenated, scaling folded):
    untrained, exactly the base's ΔW for every condition, and the B heads get a gradient; the output scale is fitted
    on the teachers' ΔW minus the base's; the base travels in the saved generator's file (its PEFT folder may go);
    raw-factor supervision and an adapter on other modules are refused."""
    from llgbm_jax.lora.adapter import delta_w
    from llgbm_jax.lora.peft import save_peft_adapter

    teachers = _teachers(2)
    base = jax.tree_util.tree_map(lambda x: x[0], teachers)  # one adapter, r 4 at scaling 2
    save_peft_adapter(base, str(tmp_path / "base"))
    config = SMALL.replace(base_adapter=str(tmp_path / "base"))
    gen = create_generator(config, model_config=TINY, seed=3)
    cond = lambda n: jax.random.normal(jax.random.PRNGKey(n), (n, gen.cond_dim))
    out = generate(gen, cond(3))
    check_lora(out, TINY)
    assert out.batch_shape == (3,) and out.config.rank == SMALL.lora_rank + 4 and out.config.scaling == 1
    for m in ALL_MODULES:
        np.testing.assert_allclose(delta_w(out, m), jnp.broadcast_to(delta_w(base, m), delta_w(out, m).shape),
                                   rtol=1e-5, atol=1e-7)
    graphdef, params, rest = nnx.split(gen, nnx.Param, ...)
    grads = jax.grad(lambda p: DeltaWLoss()(generator_fn(graphdef, rest)(p, cond(2)), teachers))(params)
    assert all(float(jnp.abs(g[...]).sum()) > 0 for k, g in nnx.to_flat_state(grads) if k[0] == "b_heads")

    gen.fit_output_scale(teachers)  # the residuals: teacher 0 is the base (0), teacher 1 minus the base
    s = teachers.config.scaling
    residual = LoRA(A={m: jnp.concatenate([a[1:], a[:1]], -2) for m, a in teachers.A.items()},
                    B={m: jnp.concatenate([s * b[1:], -s * b[:1]], -1) for m, b in teachers.B.items()},
                    config=LoRAConfig(8, 8.0))  # teacher 1's ΔW minus teacher 0's, as one adapter
    plain = tiny_generator()
    plain.fit_output_scale(residual)  # RMS over one adapter, not two of which one is zero: √2 larger
    np.testing.assert_allclose(np.sqrt(2) * np.asarray(gen.b_scale[...]), np.asarray(plain.b_scale[...]), rtol=1e-5)

    gen.b_heads["q_proj"].bias[...] = 0.01  # a non-zero correction
    path = save_generator(gen, str(tmp_path / "gen"))
    import shutil

    shutil.rmtree(tmp_path / "base")
    loaded, _ = load_generator(path)
    before, after = generate(gen, cond(2)), generate(loaded, cond(2))
    for m in ALL_MODULES:
        np.testing.assert_array_equal(np.asarray(delta_w(before, m)), np.asarray(delta_w(after, m)))
    with pytest.raises(ValueError, match="base_adapter"):
        SMALL.replace(base_adapter="x", weight_loss="factors")
    with pytest.raises(ValueError, match="set_base_adapter: expected one adapter on the modules"):
        tiny_generator().set_base_adapter(teachers)


def test_generate_lora_from_prompts():
    """One adapter from a list of prompts: the generator applied to the mean of their MiniLM embeddings.
    With the encoder attached (freeze_text_encoder=False: trained jointly, its weights in the parameters)
    the same numbers come through `condition_from_tokens`."""
    from llgbm_jax.conditions.text_encoder import load_text_encoder

    minilm = load_text_encoder()
    prompts = ["Which gas do plants absorb?", "What is the boiling point of water at sea level?", "Name a prime."]
    joint = create_generator(SMALL.replace(freeze_text_encoder=False), text_encoder=minilm, model_config=TINY)
    assert joint.text_encoder is minilm.model and joint.cond_dim == 384
    joint.fit_condition_normalizer(minilm.encode(["a b c", "what is it", "numbers and more numbers"]))
    frozen = nnx.clone(joint)
    frozen.text_encoder = None  # the same generator weights, conditions from precomputed embeddings
    n_enc = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(minilm.model, nnx.Param)))
    assert joint.num_params() == frozen.num_params() + n_enc
    lora = generate_lora(frozen, prompts, minilm)
    want = generate(frozen, minilm.encode(prompts).mean(0))
    assert lora.batch_shape == ()
    for m in lora.modules:
        np.testing.assert_allclose(lora.A[m], want.A[m], rtol=1e-6, atol=1e-7)
    got = generate_lora(joint, prompts, minilm)
    for m in lora.modules:
        np.testing.assert_allclose(got.A[m], lora.A[m], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="non-empty list"):
        generate_lora(frozen, "one string", minilm)
