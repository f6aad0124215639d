"""Hugging Face model folders (config.json + safetensors) and hub ids, offline-aware."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import urllib.parse

import jax.numpy as jnp
import numpy as np

from llgbm_jax.base.config import ModelConfig
from llgbm_jax.base.state_dict import build_params
from llgbm_jax.utils.io import read_json

HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                "tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template*"]


def safetensors_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        names = sorted(set(read_json(index)["weight_map"].values()))
        files = [os.path.join(folder, n) for n in names]
    else:
        files = [os.path.join(folder, "model.safetensors")]
    for f in files:
        if not os.path.exists(f):
            raise FileNotFoundError(f"missing weights file: {f}")
    return files


def load_hf_folder(folder: str, dtype=jnp.float32) -> tuple[ModelConfig, dict]:
    from safetensors import safe_open

    config = ModelConfig.from_hf_config(read_json(os.path.join(folder, "config.json")),
                                        os.path.join(folder, "config.json"))
    gen = os.path.join(folder, "generation_config.json")
    if os.path.exists(gen):  # generation_config's eos list is what generate() stops on
        eos = read_json(gen).get("eos_token_id")
        if eos is not None:
            eos = tuple(eos) if isinstance(eos, list) else (eos,)
            config = ModelConfig.from_dict({**config.to_dict(),
                                            "eos_token_ids": sorted(set(eos) | set(config.eos_token_ids))})
    where: dict[str, str] = {}
    handles = {}
    for f in safetensors_files(folder):
        try:
            handles[f] = safe_open(f, framework="flax")
        except Exception as e:
            raise ValueError(f"{f}: unreadable safetensors file ({e})") from None
        for k in handles[f].keys():
            where[k] = f
    if config.tie_word_embeddings:
        where.pop("lm_head.weight", None)

    def get(name):
        return np.asarray(handles[where[name]].get_tensor(name))

    return config, build_params(config, get, where.__contains__, folder, dtype)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_hf_tokenizer(folder: str):
    """The folder's tokenizer, or None for a weights-only folder (no tokenizer files)."""
    from transformers import AutoTokenizer

    if not any(os.path.exists(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(folder)


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:  # DNS lookups can block for long: bound the whole probe
        fut = pool.submit(lambda: socket.create_connection((host, 443), timeout=timeout).close())
        fut.result(timeout=timeout + 1)
        return True
    except Exception:
        return False
    finally:
        pool.shutdown(wait=False)


def resolve_hub_id(repo_id: str, patterns: list[str] = HUB_PATTERNS,
                   instead: str = "a local folder or .gguf file") -> str:
    """Local folder for a hub id (only the files matching ``patterns``): the Hugging Face cache if it has
    it, else a download. Offline (no network, or HF_HUB_OFFLINE=1) and not cached, this fails at once,
    suggesting ``instead``.
    """
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass
    if not _hub_reachable():
        raise OSError(f"{repo_id!r} is not a local path, not in the Hugging Face cache, and the hub cannot be "
                      f"reached (offline). Pass {instead}, or connect to the network.")
    return snapshot_download(repo_id, allow_patterns=patterns)
