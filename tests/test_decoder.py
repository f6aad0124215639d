"""The JAX decoder against transformers' PyTorch models on the same saved weights (tiny random models).

Tolerances (float32): logits and final hidden states within 1e-4 of transformers at every real
(unpadded) position; greedy generation token for token.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llgbm_jax.base import attention, decoder
from llgbm_jax.base.model import BaseModel, load_base_model

from conftest import hf_forward, hf_generate, make_tiny_torch_model, max_diff_real, padded_batch

TOL = 1e-4
LENGTHS = [5, 11, 1, 8]  # one full row, one single-token row
WIDTH = 11


@pytest.fixture(scope="module")
def ours(tiny_model):
    return load_base_model(tiny_model[2])


def _save(model, tmp_path) -> str:
    model.save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_transformers(tiny_model, ours, side):
    family, model, _ = tiny_model
    ids, mask = padded_batch(np.random.RandomState(1), LENGTHS, WIDTH, ours.config.vocab_size, side)
    ref, _ = hf_forward(model, ids, mask)
    got = np.asarray(ours.logits(ids, mask))
    assert got.dtype == np.float32 and got.shape == ref.shape
    diff = max_diff_real(got, ref, mask)
    print(f"{family} {side}-padded logits max |diff| = {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("variant", ["tied", "llama3_rope"])
def test_llama_variants_match_transformers(variant, tmp_path):
    overrides = {"tied": dict(tie_word_embeddings=True),
                 "llama3_rope": dict(rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                       high_freq_factor=4.0, original_max_position_embeddings=64))}
    model = make_tiny_torch_model("llama", seed=3, **overrides[variant])
    ours = load_base_model(_save(model, tmp_path))
    if variant == "tied":
        assert ours.config.tie_word_embeddings and "lm_head" not in ours.params
    else:
        assert dict(ours.config.rope_scaling)["rope_type"] == "llama3"
    ids, mask = padded_batch(np.random.RandomState(2), [40, 23, 7], 40, ours.config.vocab_size, "left")
    ref, _ = hf_forward(model, ids, mask)
    diff = max_diff_real(ours.logits(ids, mask), ref, mask)
    print(f"llama {variant} logits max |diff| = {diff:.2e}")
    assert diff <= TOL
    if variant == "llama3_rope":  # the scaling must matter at these positions, or this test proves nothing
        plain, _ = hf_forward(make_tiny_torch_model("llama", seed=3), ids, mask)
        assert max_diff_real(plain, ref, mask) > 100 * TOL


@pytest.mark.parametrize("side", ["left", "right"])
def test_long_padded_batch_matches_transformers(tiny_model, ours, side):
    """Sequences longer than `attention.QUERY_CHUNK` (attention in query chunks, the last one partial)."""
    family, model, _ = tiny_model
    lengths = [150, 97, 3]
    ids, mask = padded_batch(np.random.RandomState(2), lengths, 150, ours.config.vocab_size, side)
    diff = max_diff_real(np.asarray(ours.logits(ids, mask)), hf_forward(model, ids, mask)[0], mask)
    print(f"{family} {side}-padded 150-token logits max |diff| = {diff:.2e}")
    assert diff <= TOL


def test_query_chunks_equal_one_softmax():
    """`attend_chunked` in query chunks equals one softmax over all keys, with a cache block before the new
    tokens' causal block (as when a prompt continues from a KV cache)."""
    rng = np.random.RandomState(0)
    b, s, t, h, kv, d = 2, 37, 9, 6, 2, 8
    q = jnp.asarray(rng.randn(b, s, h, d), jnp.float32)
    cache = tuple(jnp.asarray(rng.randn(b, kv, t, d), jnp.float32) for _ in range(2))
    new = tuple(jnp.asarray(rng.randn(b, kv, s, d), jnp.float32) for _ in range(2))
    cache_allowed = jnp.asarray(np.broadcast_to(rng.rand(b, 1, t) > 0.3, (b, s, t)))
    causal = jnp.asarray(np.tril(np.ones((s, s), bool))[None] & (rng.rand(b, 1, s) > 0.2))
    blocks = [(*cache, cache_allowed), (*new, causal)]
    whole = np.asarray(attention.attend_chunked(q, blocks, query_chunk=s))
    for chunk in (1, 8, 16, 36):
        np.testing.assert_allclose(np.asarray(attention.attend_chunked(q, blocks, query_chunk=chunk)), whole, rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(ours, side):
    """A sequence's logits alone equal its logits inside a padded batch of other sequences."""
    ids, mask = padded_batch(np.random.RandomState(4), LENGTHS, WIDTH, ours.config.vocab_size, side)
    batch = np.asarray(ours.logits(ids, mask))
    for i, n in enumerate(LENGTHS):
        real = mask[i].astype(bool)
        alone = np.asarray(ours.logits(ids[i:i + 1, real], np.ones((1, n), np.int64)))[0]
        np.testing.assert_allclose(batch[i][real], alone, atol=1e-5, rtol=0)


def test_bfloat16_close_to_float32(tiny_model, ours):
    bf = load_base_model(tiny_model[2], dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(bf.params))
    ids, mask = padded_batch(np.random.RandomState(5), LENGTHS, WIDTH, ours.config.vocab_size, "left")
    lo, hi = np.asarray(bf.logits(ids, mask)), np.asarray(ours.logits(ids, mask))
    assert lo.dtype == np.float32
    real = mask.astype(bool)
    diff, scale = max_diff_real(lo, hi, mask), float(np.abs(hi[real]).max())
    agree = float((lo.argmax(-1) == hi.argmax(-1))[real].mean())
    print(f"{tiny_model[0]} bf16 vs f32: max |diff| = {diff:.3f} (max |logit| {scale:.2f}), "
          f"argmax agreement {agree:.0%}")
    # bf16 keeps 8 significant bits (0.4%); over a few layers the logits move by ~1% of their scale.
    assert diff <= 0.04 * scale
    assert agree >= 0.8  # near-ties between random logits may flip


def test_hidden_states_match_transformers(tiny_model, ours):
    _, model, _ = tiny_model
    ids, mask = padded_batch(np.random.RandomState(6), LENGTHS, WIDTH, ours.config.vocab_size, "left")
    _, ref = hf_forward(model, ids, mask)
    got = np.asarray(ours.hidden_states(ids, mask))
    assert got.shape == ref.shape
    assert max_diff_real(got, ref, mask) <= TOL


@pytest.mark.parametrize("remat", [True, "dots"])
def test_remat_identical(ours, remat):
    """remat: the same forward output bit for bit, and the same gradients up to fusion order."""
    ids, mask = padded_batch(np.random.RandomState(7), LENGTHS, WIDTH, ours.config.vocab_size, "left")
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    fwd = jax.jit(lambda p, remat: decoder.forward(p, ours.config, ids, mask, remat=remat)[0], static_argnums=1)
    np.testing.assert_array_equal(np.asarray(fwd(ours.params, remat)), np.asarray(fwd(ours.params, False)))

    def loss(params, remat):
        logits = decoder.lm_head(params, ours.config, fwd(params, remat))
        return jnp.sum(logits ** 2 * mask[..., None])

    g0, g1 = (jax.jit(jax.grad(loss), static_argnums=1)(ours.params, r) for r in (False, remat))
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * np.abs(b).max())
    with pytest.raises(ValueError, match="remat must be"):
        decoder.remat_policy("some")


# --- greedy generation ------------------------------------------------------------------------------

N_NEW = 16


def test_generate_matches_transformers(tiny_model, ours):
    _, model, _ = tiny_model
    ids, mask = padded_batch(np.random.RandomState(8), LENGTHS, WIDTH, ours.config.vocab_size, "left")
    got = np.asarray(ours.generate(ids, mask, N_NEW))
    assert got.shape == (len(LENGTHS), N_NEW)
    np.testing.assert_array_equal(got, hf_generate(model, ids, mask, N_NEW))
    ids_r, mask_r = np.zeros_like(ids), np.zeros_like(mask)  # the same sequences, padded on the right
    for i, n in enumerate(LENGTHS):
        ids_r[i, :n], mask_r[i, :n] = ids[i, WIDTH - n:], 1
    np.testing.assert_array_equal(np.asarray(ours.generate(ids_r, mask_r, N_NEW)), got)


def with_eos(model: BaseModel, eos: int) -> BaseModel:
    return BaseModel(dataclasses.replace(model.config, eos_token_ids=(eos,)), model.params, None)


def _early_eos(tokens: np.ndarray) -> int:
    """A token that one row emits within its first few steps while another row never emits it."""
    for step in range(1, 6):
        for row in tokens:
            t = int(row[step])
            if t not in row[:step] and any(t not in other for other in tokens):
                return t
    raise AssertionError(f"no token usable as a forced EOS in {tokens}")


def test_generate_stops_per_row_at_eos(tiny_model, ours):
    """Force an EOS the model really emits early in some row: that row stops, others go on, as in HF."""
    _, model, _ = tiny_model
    ids, mask = padded_batch(np.random.RandomState(8), LENGTHS, WIDTH, ours.config.vocab_size, "left")
    free = np.asarray(with_eos(ours, -1).generate(ids, mask, N_NEW))  # an EOS that never comes
    eos = _early_eos(free)
    forced = with_eos(ours, eos)
    assert forced.eos_token_ids == (eos,)
    got = np.asarray(forced.generate(ids, mask, N_NEW))
    pad = forced.pad_token_id
    np.testing.assert_array_equal(got, hf_generate(model, ids, mask, N_NEW, eos_token_id=eos, pad_token_id=pad))
    stopped = [i for i, row in enumerate(free) if eos in row]
    assert stopped and len(stopped) < len(free)  # some rows stop, some run to the end
    assert min(list(free[i]).index(eos) for i in stopped) <= 5
    for i, row in enumerate(free):
        if i in stopped:
            k = list(row).index(eos)
            np.testing.assert_array_equal(got[i, :k + 1], row[:k + 1])
            assert (got[i, k + 1:] == pad).all()
            if k <= 5:  # the row that picked the EOS: without it, this row would have gone on
                assert (row[k + 1:] != pad).any()
        else:
            np.testing.assert_array_equal(got[i], row)


def test_onednn_matmuls_match_transformers(tiny_model, ours):
    """The opt-in oneDNN build of the forward (`models.cpu_matmul`) meets the same tolerance."""
    from llgbm_jax.base.cpu_matmul import compile_with_onednn

    family, model, _ = tiny_model
    ids, mask = padded_batch(np.random.RandomState(1), LENGTHS, WIDTH, ours.config.vocab_size, "left")
    fn = lambda p, i, m: decoder.logits(p, ours.config, i, m)
    got = np.asarray(compile_with_onednn(fn, ours.params, ids, mask)(ours.params, ids, mask))
    diff = max_diff_real(got, hf_forward(model, ids, mask)[0], mask)
    print(f"{family} oneDNN logits max |diff| = {diff:.2e}")
    assert diff <= TOL
