"""Attention paths (`llgbm_jax.base.attention`): the rule that chooses one, and every path that runs on
the CPU against the chunked path and transformers.

On the CPU the fused paths run as ``"xla"`` (`jax.nn.dot_product_attention` with the arguments the cuDNN
path passes; only ``implementation`` differs) and ``"splash"`` (Pallas splash attention in interpret
mode). Tolerances (float32): logits within 1e-4 of transformers and 2e-5 of the chunked path at real
positions; gradients within 1e-4 relative to their largest entry; greedy tokens identical.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llgbm_jax.base import attention
from llgbm_jax.base.model import load_base_model
from llgbm_jax.lora.adapter import LoRAConfig, init_lora
from llgbm_jax.scoring import accuracy as ev

from conftest import hf_forward, hf_generate, make_tiny_torch_model, max_diff_real, padded_batch

FUSED_ON_CPU = ("xla", "splash")
BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32


@pytest.mark.parametrize("backend, dtype, padding, cache, setting, want", [
    # auto: cuDNN on a CUDA GPU for half precision without left padding; splash on TPU; chunked elsewhere
    ("gpu", BF16, "right", False, "auto", "cudnn"),
    ("gpu", F16, "none", False, "auto", "cudnn"),
    ("gpu", BF16, "any", False, "auto", "chunked"),      # left padding: cuDNN cannot express it
    ("gpu", F32, "right", False, "auto", "chunked"),     # cuDNN needs bf16/fp16
    ("gpu", BF16, "right", True, "auto", "chunked"),     # the KV cache's valid-slot mask
    ("rocm", BF16, "right", False, "auto", "chunked"),   # no cuDNN
    ("tpu", BF16, "any", False, "auto", "splash"),       # splash takes either padding (segment ids)
    ("tpu", F16, "right", False, "auto", "splash"),
    ("tpu", F32, "none", False, "auto", "chunked"),
    ("tpu", BF16, "none", True, "auto", "chunked"),
    ("cpu", BF16, "none", False, "auto", "chunked"),
    ("cpu", F32, "right", False, "auto", "chunked"),
    # forced: used where the path can express the case, chunked elsewhere
    ("gpu", BF16, "right", False, "chunked", "chunked"),
    ("tpu", BF16, "any", False, "chunked", "chunked"),
    ("gpu", F32, "right", False, "cudnn", "chunked"),
    ("gpu", BF16, "any", False, "cudnn", "chunked"),
    ("gpu", F16, "right", False, "cudnn", "cudnn"),
    ("cpu", F32, "right", False, "xla", "xla"),
    ("gpu", BF16, "none", False, "xla", "xla"),
    ("cpu", F32, "any", False, "xla", "chunked"),
    ("cpu", F32, "right", True, "xla", "chunked"),
    ("cpu", F32, "any", False, "splash", "splash"),
    ("gpu", BF16, "right", False, "splash", "splash"),
    ("tpu", BF16, "right", True, "splash", "chunked"),
])
def test_choose_attention(backend, dtype, padding, cache, setting, want):
    assert attention.choose_attention(backend, dtype, padding, cache, setting) == want


def test_choose_attention_errors():
    with pytest.raises(ValueError, match="'cudnn' needs a CUDA GPU; the JAX backend is 'cpu'"):
        attention.choose_attention("cpu", BF16, "right", False, "cudnn")
    with pytest.raises(ValueError, match="setting must be one of"):
        attention.choose_attention("gpu", BF16, "right", False, "flash")
    with pytest.raises(ValueError, match="padding must be one of"):
        attention.choose_attention("gpu", BF16, "left", False, "auto")


def test_setting_and_padding(monkeypatch):
    monkeypatch.delenv(attention.ENV_VAR, raising=False)
    assert attention.attention_setting() == "auto"
    monkeypatch.setenv(attention.ENV_VAR, "xla")
    assert attention.attention_setting() == "xla"
    with attention.use_attention("splash"):
        assert attention.attention_setting() == "splash"
    assert attention.attention_setting() == "xla"
    monkeypatch.setenv(attention.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="LLGBM_ATTENTION='fast'"):
        attention.attention_setting()
    with pytest.raises(ValueError, match="setting must be one of"):
        with attention.use_attention("fast"):
            pass
    monkeypatch.delenv(attention.ENV_VAR)

    right = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    assert attention.padding_of(np.ones((2, 3))) == "none"
    assert attention.padding_of(right) == "right"
    assert attention.padding_of(right[:, ::-1]) == "any"
    assert attention.padding_of(np.array([[1, 0, 1]])) == "any"
    traced = []
    jax.jit(lambda m: traced.append(attention.padding_of(m)) or m)(right)
    assert traced == ["any"]
    assert attention.padding_for(right, F32) == "any"  # chunked on a CPU whatever the padding: one compilation
    with attention.use_attention("xla"):
        assert attention.padding_for(right, F32) == "right"
        assert attention.padding_for(np.ones((2, 3)), F32) == "none"


@pytest.fixture
def chosen(monkeypatch):
    """The paths `make_attention` chooses while functions are traced."""
    seen = []
    real = attention.choose_attention

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(attention, "choose_attention", spy)
    return seen


@pytest.fixture(scope="module")
def ours(tiny_model):
    return load_base_model(tiny_model[2])


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """One tiny model (grouped-query heads, q/k/v biases) for the slower checks: ``(torch_model, ours)``."""
    model = make_tiny_torch_model("qwen2", seed=4)
    folder = tmp_path_factory.mktemp("tiny-qwen2-attention")
    model.save_pretrained(folder)
    return model, load_base_model(str(folder))


@pytest.mark.parametrize("side", ["left", "right"])
def test_paths_match_transformers_and_chunked(tiny_model, ours, side, chosen):
    """Sequences longer than a query chunk, padded on either side: each path's logits equal
    transformers' and the chunked path's; xla takes right padding and leaves left padding to chunked."""
    family, model, _ = tiny_model
    ids, mask = padded_batch(np.random.RandomState(2), [150, 97, 3], 150, ours.config.vocab_size, side)
    ref = hf_forward(model, ids, mask)[0]
    with attention.use_attention("chunked"):
        base = np.asarray(ours.logits(ids, mask))
    for impl in FUSED_ON_CPU:
        chosen.clear()
        with attention.use_attention(impl):
            got = np.asarray(ours.logits(ids, mask))
        expected = "chunked" if (impl, side) == ("xla", "left") else impl
        assert set(chosen) == {expected}
        diff_ref, diff_chunked = max_diff_real(got, ref, mask), max_diff_real(got, base, mask)
        print(f"{family} {side} {impl}: max |diff| transformers {diff_ref:.1e}, chunked {diff_chunked:.1e}")
        assert diff_ref <= 1e-4 and diff_chunked <= 2e-5
        assert np.isfinite(got).all()


@pytest.mark.parametrize("impl", FUSED_ON_CPU)
def test_generation_with_kv_cache(qwen2, impl, chosen):
    """Greedy generation (fused prefill where the path allows it, then cached steps) equals
    transformers token for token, from left- and right-padded prompts."""
    model, ours = qwen2
    lengths, width, n = [5, 11, 1, 8], 11, 12
    ids, mask = padded_batch(np.random.RandomState(8), lengths, width, ours.config.vocab_size, "left")
    ids_r, mask_r = np.zeros_like(ids), np.zeros_like(mask)
    for i, k in enumerate(lengths):
        ids_r[i, :k], mask_r[i, :k] = ids[i, width - k:], 1
    want = hf_generate(model, ids, mask, n)
    with attention.use_attention(impl):
        chosen.clear()
        np.testing.assert_array_equal(np.asarray(ours.generate(ids_r, mask_r, n)), want)
        assert impl in chosen and "chunked" in chosen  # a fused prefill, cached decoding steps
        np.testing.assert_array_equal(np.asarray(ours.generate(ids, mask, n)), want)


def test_option_scoring_with_prefix_cache(qwen2, chosen):
    """Evaluation's prefix cache (a fused prefill of unpadded tokens) feeds the cached forward of
    left-padded prompts and options: the same log-probabilities as the chunked path."""
    _, ours = qwen2
    rng = np.random.RandomState(0)
    vocab = ours.config.vocab_size
    prefix = rng.randint(3, vocab, 40).astype(np.int32)
    ids, mask = padded_batch(rng, [6, 2, 9], 12, vocab, "left")
    opt, om = rng.randint(3, vocab, (3, 2, 3)).astype(np.int32), np.ones((3, 2, 3), np.int32)
    om[1, 1, 2:] = 0
    out = {}
    for impl in ("chunked",) + FUSED_ON_CPU:
        with attention.use_attention(impl):
            chosen.clear()
            cache = ev.prefix_cache(ours.params, ours.config, prefix)
            out[impl] = np.asarray(ev.option_token_logprobs(ours.params, ours.config, ids, mask, opt, om, None, cache))
            assert chosen[0] == impl
    for impl in FUSED_ON_CPU:
        np.testing.assert_allclose(out[impl], out["chunked"], atol=2e-5, rtol=0)


def _close_trees(a, b, rel: float):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert np.abs(x - y).max() <= rel * np.abs(y).max(), (np.abs(x - y).max(), np.abs(y).max())


def test_attention_gradients_equal_chunked():
    """d/dq, d/dk, d/dv of each path equal the chunked path's on right-padded rows (one of them
    empty: padding only), and stay finite; outputs at real positions are equal."""
    rng = np.random.RandomState(0)
    b, s, h, kv, d = 3, 45, 4, 2, 16
    q, k, v = (jnp.asarray(rng.randn(b, s, n, d), F32) for n in (h, kv, kv))
    lengths = np.array([45, 17, 0])
    mask = jnp.asarray(np.arange(s)[None] < lengths[:, None])
    weights = jnp.asarray(rng.randn(b, s, h * d), F32) * mask[..., None]  # loss on real positions only

    def run(impl):
        with attention.use_attention(impl):
            attend = attention.make_attention(mask, "right")
            assert attend.implementation == impl
            out = jax.jit(lambda q, k, v: attend(q, k, v, None))(q, k, v)
            grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v, None) * weights), (0, 1, 2)))(q, k, v)
        return np.asarray(out), grads

    out0, g0 = run("chunked")
    for impl in FUSED_ON_CPU:
        out, g = run(impl)
        real = np.asarray(mask)
        np.testing.assert_allclose(out[real], out0[real], atol=2e-6, rtol=0)
        assert np.isfinite(out).all() and all(np.isfinite(np.asarray(x)).all() for x in g)
        _close_trees(g, g0, 1e-5)


def test_lora_gradient_equals_chunked(qwen2, chosen):
    """A teacher's loss (`teachers.sft_loss`: right padding, remat 'dots') and its LoRA gradient
    through each path equal the chunked path's."""
    from llgbm_jax.teachers.sft import sft_loss

    _, ours = qwen2
    ids, mask = padded_batch(np.random.RandomState(3), [40, 23, 7], 40, ours.config.vocab_size, "right")
    pos = np.stack([np.clip(np.arange(n - 5, n) - 1, 0, None) for n in (40, 23, 7)]).astype(np.int32)
    batch = dict(ids=ids.astype(np.int32), mask=mask.astype(np.int32), target_pos=pos,
                 target_ids=np.take_along_axis(ids, pos + 1, 1).astype(np.int32),
                 target_mask=np.ones((3, 5), np.float32))
    lora = init_lora(jax.random.PRNGKey(1), ours.config, LoRAConfig(4, 8), random_b=True, b_std=0.2)
    grad = jax.jit(jax.value_and_grad(lambda l: sft_loss(l, ours.params, ours.config, batch, "dots")))
    with attention.use_attention("chunked"):
        loss0, g0 = grad(lora)
    for impl in FUSED_ON_CPU:
        with attention.use_attention(impl):
            chosen.clear()
            loss, g = grad(lora)
            assert set(chosen) == {impl}
        assert abs(float(loss) - float(loss0)) <= 1e-5
        _close_trees(g, g0, 1e-4)


def test_bfloat16_paths_close_to_chunked(qwen2, tmp_path):
    """In bfloat16 (the dtype the fused kernels take on accelerators) each path stays as close to the
    float32 truth as the chunked path does."""
    model, _ = qwen2
    model.save_pretrained(tmp_path)
    bf = load_base_model(str(tmp_path), dtype="bfloat16")
    ids, mask = padded_batch(np.random.RandomState(5), [64, 40, 9], 64, bf.config.vocab_size, "right")
    truth = hf_forward(model, ids, mask)[0]
    errors = {}
    for name in ("chunked",) + FUSED_ON_CPU:
        with attention.use_attention(name):
            errors[name] = max_diff_real(bf.logits(ids, mask), truth, mask)
    scale = float(np.abs(truth).max())
    print(f"bf16 max |diff| to float32 transformers: {errors} (max |logit| {scale:.2f})")
    assert 0 < errors["chunked"] <= 0.04 * scale
    for name in FUSED_ON_CPU:
        assert errors[name] <= 1.5 * errors["chunked"] + 1e-3 * scale
