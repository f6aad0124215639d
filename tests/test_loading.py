"""Loaders: clear errors that name the file or tensor, sharded folders, our checkpoint format, the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import make_tiny_torch_model, padded_batch
from safetensors.numpy import load_file, save_file

from llgbm_jax.models import load_base_model
from llgbm_jax.models.checkpoint import MARKER, save_checkpoint

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
    from llgbm_jax.models.base_model import embedded_gguf_path

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
        from llgbm_jax.models import load_base_model
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

def _cli():
    spec = importlib.util.spec_from_file_location("hf_to_jax", os.path.join(REPO, "convert", "hf_to_jax.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_convert_cli(llama_folder, tmp_path, capsys):
    cli = _cli()
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0 and "--out" in capsys.readouterr().out
    out = str(tmp_path / "converted")
    cli.main([llama_folder, "--out", out, "--dtype", "bfloat16"])
    printed = capsys.readouterr().out
    assert "load source:" in printed and "load checkpoint:" in printed
    assert_same_model(load_base_model(out, "bfloat16"), load_base_model(llama_folder, "bfloat16"))


def test_convert_cli_help_subprocess():
    out = subprocess.run([sys.executable, os.path.join(REPO, "convert", "hf_to_jax.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--dtype" in out.stdout, out.stderr
