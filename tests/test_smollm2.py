"""The embedded SmolLM2-135M-Instruct (GGUF) against transformers' PyTorch model on the same GGUF file.

Tolerances (float32): logits within 1e-3 at every real position with identical argmax; tokenizer ids
and 32 greedy tokens identical; dequantized weights bitwise identical. bfloat16: no further from
transformers' float32 logits than transformers' own bfloat16 (mean and max |difference|, argmax agreement).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import hf_forward, hf_generate, max_diff_real

pytestmark = pytest.mark.slow

SYSTEM = "You are a concise assistant. Answer in one sentence."
PROMPTS = [  # (user, system): with the template's default system message and with our own
    ("What is the capital of France?", None),
    ("Write a haiku about the sea.", SYSTEM),
    ("If I have 3 apples and eat one, how many are left?", None),
    ("Translate 'good morning' into Spanish.", SYSTEM),
    ("Name three primary colors.", None),
]


def hf_chat_ids(tok, user: str, system: str | None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"])


@pytest.fixture(scope="module")
def batch(smollm2):
    """Left-padded ids and mask of the chat-formatted prompts."""
    return smollm2.encode([smollm2.chat_prompt(u, s) for u, s in PROMPTS], padding_side="left")


def test_chat_tokenization_matches_transformers(smollm2, smollm2_torch, batch):
    _, tok = smollm2_torch
    ids, mask = batch
    for row, (user, system) in enumerate(PROMPTS):
        ref = hf_chat_ids(tok, user, system)
        assert ids[row][mask[row] == 1].tolist() == ref, (user, system)
        assert (system or "SmolLM") in tok.decode(ref)  # the system message is really in there
    assert (ids[mask == 0] == smollm2.pad_token_id).all() and (mask[:, -1] == 1).all()


def test_weights_match_transformers_gguf_loader(smollm2, smollm2_torch):
    """Same dequantized weights, bitwise; q/k specifically undo llama.cpp's row permutation."""
    import gguf

    from llgbm_jax.base.model import embedded_gguf_path
    from llgbm_jax.base.state_dict import LAYER_KEYS, hf_name

    model, _ = smollm2_torch
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    layers = smollm2.params["layers"]
    for key in ("q_proj", "k_proj"):
        np.testing.assert_array_equal(np.asarray(layers[key][0]), sd[hf_name(key, 0)])
    raw = {t.name: t
           for t in gguf.GGUFReader(embedded_gguf_path("smollm2-135m-instruct")).tensors}["blk.0.attn_q.weight"]
    permuted = np.asarray(gguf.dequantize(raw.data, raw.tensor_type),
                          np.float32).reshape(sd[hf_name("q_proj", 0)].shape)
    assert not np.array_equal(permuted, sd[hf_name("q_proj", 0)])  # the file's order really differs
    for key in LAYER_KEYS:
        if key in layers:
            for i in range(smollm2.config.num_layers):
                np.testing.assert_array_equal(np.asarray(layers[key][i]), sd[hf_name(key, i)], err_msg=f"{key} {i}")
    for key in ("embed", "final_norm"):
        np.testing.assert_array_equal(np.asarray(smollm2.params[key]), sd[hf_name(key)])
    assert smollm2.config.tie_word_embeddings and "lm_head" not in smollm2.params


def test_logits_match_transformers(smollm2, smollm2_torch, batch):
    model, _ = smollm2_torch
    ids, mask = batch
    ref, ref_hidden = hf_forward(model, ids.astype(np.int64), mask.astype(np.int64))
    got = np.asarray(smollm2.logits(ids, mask))
    real = mask.astype(bool)
    diff = max_diff_real(got, ref, mask)
    hidden_diff = max_diff_real(smollm2.hidden_states(ids, mask), ref_hidden, mask)
    print(f"\nSmolLM2-135M float32, {real.sum()} real positions: logits max |diff| = {diff:.2e} "
          f"(max |logit| {np.abs(ref[real]).max():.1f}), final hidden max |diff| = {hidden_diff:.2e}")
    assert diff <= 1e-3
    np.testing.assert_array_equal(got.argmax(-1)[real], ref.argmax(-1)[real])


def test_greedy_generation_matches_transformers(smollm2, smollm2_torch, batch):
    model, _ = smollm2_torch
    ids, mask = batch
    n = 32
    got = np.asarray(smollm2.generate(ids, mask, n))
    ref = hf_generate(model, ids.astype(np.int64), mask.astype(np.int64), n, pad_token_id=smollm2.pad_token_id,
                      eos_token_id=list(smollm2.eos_token_ids))
    for text in smollm2.decode(got):
        print(repr(text))
    np.testing.assert_array_equal(got, ref)
    assert len(set(map(tuple, got.tolist()))) == len(PROMPTS)  # real, distinct continuations
    is_eos = np.isin(got, smollm2.eos_token_ids)
    stops = set(np.where(is_eos.any(-1), is_eos.argmax(-1), n).tolist())
    assert len(stops) > 1 and min(stops) < n - 1  # rows stop at EOS at different steps: per-row stopping is exercised


def _logit_error(logits, ref, mask) -> dict[str, float]:
    real = mask.astype(bool)
    d = np.abs(np.asarray(logits, np.float32) - ref)[real]
    return {"mean": float(d.mean()), "max": float(d.max()),
            "argmax": float((np.asarray(logits).argmax(-1) == ref.argmax(-1))[real].mean())}


def test_bfloat16_no_further_from_float32_than_transformers_bfloat16(smollm2, smollm2_torch, batch, torch_one_thread):
    """Ours in bfloat16 and transformers in bfloat16 (the same bf16 weights), both against transformers in
    float32: ours is no further, per logit (mean and max |difference|) and in argmax agreement. Ours keeps
    norms, rotary angles, attention softmax and logits in float32; transformers rounds each to bf16.
    Also printed: ours with transformers' RMSNorm rounding (normalised input and weight multiply in bf16
    instead of one float32 multiply), to show which rounding is closer (docs/base-model.md)."""
    import copy

    import jax
    import jax.numpy as jnp
    import torch

    from llgbm_jax.base import decoder
    from llgbm_jax.base.model import BaseModel, load_base_model

    model, _ = smollm2_torch
    ids, mask = batch
    ref, _ = hf_forward(model, ids.astype(np.int64), mask.astype(np.int64))
    torch_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    ours_bf16 = load_base_model("smollm2-135m-instruct", dtype="bfloat16")
    np.testing.assert_array_equal(np.asarray(ours_bf16.params["embed"], np.float32),
                                  torch_bf16.model.embed_tokens.weight.detach().float().numpy())  # same weights
    theirs = _logit_error(hf_forward(torch_bf16, ids.astype(np.int64), mask.astype(np.int64))[0], ref, mask)
    ours = _logit_error(ours_bf16.logits(ids, mask), ref, mask)

    def rms_norm_as_transformers(x, weight, eps):
        xf = x.astype(jnp.float32)
        return weight.astype(x.dtype) * (xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + eps)).astype(x.dtype)

    real_rms_norm, decoder.rms_norm = decoder.rms_norm, rms_norm_as_transformers
    try:
        variant = _logit_error(BaseModel(ours_bf16.config, ours_bf16.params, ours_bf16.tokenizer).logits(ids, mask),
                               ref, mask)
    finally:
        decoder.rms_norm = real_rms_norm
    print(f"\nbfloat16 vs transformers float32, {int(mask.sum())} positions "
          f"(max |logit| {np.abs(ref[mask > 0]).max():.1f}):")
    for name, e in (("ours", ours), ("transformers", theirs), ("ours, RMSNorm rounded as transformers", variant)):
        print(f"  {name:<38} mean |diff| {e['mean']:.4f}  max |diff| {e['max']:.3f}  "
              f"argmax agreement {e['argmax']:.1%}")
    assert ours["mean"] <= theirs["mean"] and ours["max"] <= theirs["max"] and ours["argmax"] >= theirs["argmax"]
    assert ours["mean"] > 1e-3  # really bfloat16: float32 is within 1e-3 at every position
