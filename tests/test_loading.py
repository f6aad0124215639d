"""Loaders: clear errors that name the file or tensor, sharded folders, our checkpoint format, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from llgbm_jax.base.checkpoint import MARKER, save_checkpoint
from llgbm_jax.base.model import load_base_model

from conftest import help_text, hf_forward, make_tiny_torch_model, max_diff_real, padded_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_torch_model("llama").save_pretrained(folder)
    return str(folder)


@pytest.fixture
def folder_copy(llama_folder, tmp_path) -> str:
    """A private copy of the tiny Llama folder that a test may damage."""
    return str(shutil.copytree(llama_folder, tmp_path / "model"))


def assert_same_model(a, b):
    """Bitwise-identical config, params (same dtypes) and logits."""
    assert a.config == b.config
    fa, fb = jax.tree_util.tree_flatten_with_path(a.params), jax.tree_util.tree_flatten_with_path(b.params)
    assert fa[1] == fb[1]
    for (path, x), (_, y) in zip(fa[0], fb[0]):
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
    ids, mask = padded_batch(np.random.RandomState(0), [6, 3], 6, a.config.vocab_size, "left")
    np.testing.assert_array_equal(np.asarray(a.logits(ids, mask)), np.asarray(b.logits(ids, mask)))


# --- errors -----------------------------------------------------------------------------------------

def test_unknown_model_type(folder_copy):
    cfg = os.path.join(folder_copy, "config.json")
    with open(cfg) as f:
        hf = json.load(f)
    with open(cfg, "w") as f:
        json.dump({**hf, "model_type": "gpt2"}, f)
    with pytest.raises(ValueError, match=r"config\.json: unsupported model_type 'gpt2'") as e:
        load_base_model(folder_copy)
    assert cfg in str(e.value)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_attention_bias_rejected(family, tmp_path):
    """attention_bias also adds an o_proj bias the decoder lacks: refuse rather than compute wrong logits."""
    make_tiny_torch_model(family, attention_bias=True).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="attention_bias=True .* not supported") as e:
        load_base_model(str(tmp_path))
    assert str(tmp_path / "config.json") in str(e.value)


def test_missing_config_json(folder_copy):
    os.remove(os.path.join(folder_copy, "config.json"))
    with pytest.raises(FileNotFoundError, match="no config.json") as e:
        load_base_model(folder_copy)
    assert folder_copy in str(e.value)


def test_missing_safetensors(folder_copy):
    weights = os.path.join(folder_copy, "model.safetensors")
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match="missing weights file") as e:
        load_base_model(folder_copy)
    assert weights in str(e.value)


def _edit_weights(folder: str, edit) -> None:
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_wrong_tensor_shape(folder_copy):
    name = "model.layers.1.self_attn.k_proj.weight"
    _edit_weights(folder_copy, lambda t: t.update({name: t[name][:-1]}))
    with pytest.raises(ValueError, match=rf"tensor '{name}' has shape \(31, 64\), expected \(32, 64\)") as e:
        load_base_model(folder_copy)
    assert folder_copy in str(e.value)


def test_missing_tensor(folder_copy):
    name = "model.layers.0.mlp.up_proj.weight"
    _edit_weights(folder_copy, lambda t: t.pop(name))
    with pytest.raises(KeyError, match=f"missing tensor '{name}'") as e:
        load_base_model(folder_copy)
    assert folder_copy in str(e.value)


@pytest.mark.parametrize("keep", [0, 1000, 10**6, "half"])
def test_truncated_gguf(tmp_path, monkeypatch, keep):
    from llgbm_jax.base.model import embedded_gguf_path

    monkeypatch.setenv("LLGBM_CACHE_DIR", str(tmp_path / "cache"))
    src = embedded_gguf_path("smollm2-135m-instruct")
    n = os.path.getsize(src) // 2 if keep == "half" else keep
    bad = tmp_path / "truncated.gguf"
    with open(src, "rb") as fin, open(bad, "wb") as fout:
        fout.write(fin.read(n))
    with pytest.raises(ValueError, match="not a readable GGUF file") as e:
        load_base_model(str(bad))
    assert str(bad) in str(e.value)
    assert not os.path.exists(tmp_path / "cache" / "models") or not os.listdir(tmp_path / "cache" / "models")


@pytest.mark.parametrize("path", ["/nonexistent/llgbm-model", "./no-such-model", "no-such-file.gguf"])
def test_nonexistent_path(path):
    with pytest.raises(FileNotFoundError, match="no-such|nonexistent") as e:
        load_base_model(path)
    assert path.lstrip("./") in str(e.value)


def test_checkpoint_missing_weights(llama_folder, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    m = load_base_model(llama_folder)
    save_checkpoint(ckpt, m.config, m.params, m.tokenizer)
    os.remove(os.path.join(ckpt, "params.safetensors"))
    with pytest.raises(FileNotFoundError, match="missing weights file") as e:
        load_base_model(ckpt)
    assert os.path.join(ckpt, "params.safetensors") in str(e.value)


def test_hub_id_offline_fails_fast(tmp_path):
    """A hub id that is not cached, offline: an error saying so within seconds, not a hang or retry loop."""
    script = textwrap.dedent("""
        import time
        from llgbm_jax.base import load_base_model
        t = time.perf_counter()
        try:
            load_base_model("Qwen/Qwen2.5-0.5B-Instruct")
        except Exception as e:
            print(f"{time.perf_counter() - t:.3f}", type(e).__name__, e)
        else:
            print("loaded")
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seconds, kind, msg = out.stdout.strip().split(" ", 2)
    assert kind == "OSError" and "offline" in msg and "Qwen/Qwen2.5-0.5B-Instruct" in msg, out.stdout
    assert float(seconds) < 5.0


# --- formats that must load identically ----------------------------------------------------------

def test_sharded_folder_loads_identically(tiny_model, tmp_path):
    family, torch_model, folder = tiny_model
    torch_model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert len(shards) > 3 and os.path.exists(tmp_path / "model.safetensors.index.json")
    assert_same_model(load_base_model(str(tmp_path)), load_base_model(folder))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_checkpoint_round_trip(tiny_model, tmp_path, dtype):
    src = load_base_model(tiny_model[2], dtype)
    ckpt = str(tmp_path / "ckpt")
    save_checkpoint(ckpt, src.config, src.params, src.tokenizer, source=tiny_model[2])
    assert os.path.isfile(os.path.join(ckpt, MARKER))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]  # atomic: no leftovers
    assert_same_model(load_base_model(ckpt, dtype), src)


# --- convert/hf_to_jax.py ------------------------------------------------------------------------

def test_convert_cli(llama_folder, tmp_path, capsys):
    """`llgbm-jax convert hf-to-jax`: the checkpoint it writes loads as the same model."""
    from llgbm_jax.cli import main

    assert "hf-to-jax" in help_text(["convert"]) and "--dtype" in help_text(["convert", "hf-to-jax"])
    out = str(tmp_path / "converted")
    assert main(["convert", "hf-to-jax", llama_folder, out, "--dtype", "bfloat16"]) == 0
    printed = capsys.readouterr().out
    assert "load source:" in printed and "load checkpoint:" in printed
    assert_same_model(load_base_model(out, "bfloat16"), load_base_model(llama_folder, "bfloat16"))


def test_convert_cli_help_subprocess():
    out = subprocess.run([sys.executable, os.path.join(REPO, "convert", "hf_to_jax.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--dtype" in out.stdout, out.stderr


# --- GGUF rope scaling ---------------------------------------------------------------------------

LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)


def llama_cpp_rope_freqs(head_dim: int, theta: float, scaling: dict) -> np.ndarray:
    """The ``rope_freqs`` tensor llama.cpp's convert_hf_to_gguf.py writes for "llama3" scaling
    (per-frequency divisors), written out here as that converter computes it."""
    import math

    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    old, factor = scaling["original_max_position_embeddings"], scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, np.float32)


def write_gguf(path, torch_model, keys=(), tensors=()) -> str:
    """A float32 llama GGUF of ``torch_model`` as llama.cpp's converter lays it out (q/k rows permuted
    for its rotary pairs), plus extra ``keys`` (``(writer method, *args)``) and ``tensors``."""
    import gguf

    c = torch_model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    for method, *args in keys:
        getattr(w, method)(*args)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in torch_model.state_dict().items()}

    def permute(x, heads):
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, x in sd.items():
        if name in names:
            w.add_tensor(names[name], x)
            continue
        _, _, i, rest = name.split(".", 3)
        module = rest.rsplit(".", 1)[0]
        if module == "self_attn.q_proj":
            x = permute(x, c.num_attention_heads)
        elif module == "self_attn.k_proj":
            x = permute(x, c.num_key_value_heads)
        w.add_tensor(f"blk.{i}.{layer[module]}.weight", x)
    for name, x in tensors:
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.mark.parametrize("scaling", ["llama3", "linear"])
def test_gguf_rope_scaling_matches_transformers(tmp_path, scaling):
    """A GGUF with rope scaling as llama.cpp writes it (Llama 3.1+: a ``rope_freqs`` tensor; linear:
    ``rope.scaling.type``/``.factor``) gives transformers' logits of the same model with that scaling in
    its config.json (transformers' own GGUF loader ignores these keys, so it is not the reference here)."""
    import gguf

    from llgbm_jax.base import decoder, gguf_file

    rope = LLAMA3_ROPE if scaling == "llama3" else dict(rope_type="linear", factor=4.0)
    model = make_tiny_torch_model("llama", seed=4, rope_scaling=rope)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    if scaling == "llama3":
        extra = dict(tensors=[("rope_freqs.weight", llama_cpp_rope_freqs(head_dim, 10000.0, rope))])
    else:
        extra = dict(keys=[("add_rope_scaling_type", gguf.RopeScalingType.LINEAR), ("add_rope_scaling_factor", 4.0)])
    config, params = gguf_file.load_gguf(write_gguf(tmp_path / "m.gguf", model, **extra))
    assert config.rope_scaling is not None
    ids, mask = padded_batch(np.random.RandomState(5), [200, 90], 200, config.vocab_size, "left")
    ref, _ = hf_forward(model, ids, mask)
    got = np.asarray(decoder.logits(params, config, ids, mask))
    unscaled = np.asarray(decoder.logits(params, dataclasses.replace(config, rope_scaling=None), ids, mask))
    diff, ignored = max_diff_real(got, ref, mask), max_diff_real(unscaled, ref, mask)
    print(f"{scaling}: max |logit diff| {diff:.1e}; with the scaling ignored {ignored:.1e}")
    assert diff <= 1e-4 and ignored > 1e-2


@pytest.mark.parametrize("key,value,message", [
    ("add_rope_scaling_type", "yarn", "llama.rope.scaling.type"),
    ("add_rope_scaling_attn_factors", 0.5, "llama.rope.scaling.attn_factor"),
    ("add_rope_scaling_yarn_beta_fast", 32.0, "llama.rope.scaling.yarn_beta_fast"),
    ("add_rope_scaling_factor", 2.0, "llama.rope.scaling.factor"),  # a factor with no scaling type
])
def test_gguf_rope_keys_we_cannot_apply_are_refused(tmp_path, key, value, message):
    import gguf

    from llgbm_jax.base import gguf_file

    if key == "add_rope_scaling_type":
        value = gguf.RopeScalingType.YARN
    path = write_gguf(tmp_path / "m.gguf", make_tiny_torch_model("llama"), keys=[(key, value)])
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        gguf_file.load_gguf(path)
    assert path in str(e.value)
