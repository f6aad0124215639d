"""Behavioural deltas: how an adapter moves the base model's final hidden state on the probe set.

``h`` is the hidden state after the final norm at each probe's last real token, in float32; the delta
of an adapter is ``mean over probes of h(adapted) − h(base)`` (``[H]``). A stacked batch of adapters
(leading axis N) runs as one computation: `jax.vmap` over the adapter axis of the shared-adapter
forward, so every adapter sees the same probe batch. The alternative, the probes repeated N times with
per-row adapters, was no faster (SmolLM2, 4 adapters x 8 probes x 64 tokens on the loaded 2-core CPU:
forward 10.0 against 10.9 s, gradient 45 against 46 s) and copies each adapter once per probe. The
same pure function, `delta_fn`,
serves the teachers' cache and the generator's training loss (reverse-mode differentiable in the LoRA).

`DeltaCache` stores one small ``.npz`` per (adapter content, probe set, base model, dtype,
`DELTA_VERSION`), written atomically; the stored key is checked on every read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llgbm_jax.base import decoder
from llgbm_jax.base.model import model_hash
from llgbm_jax.lora.adapter import LoRA
from llgbm_jax.lora.ops import lora_hash, stack_any
from llgbm_jax.utils.io import atomic_file, warn_unusable

DELTA_VERSION = 1


# --- the pure functions (hot path: called inside jit) ------------------------------------------------

def _last_hidden(params, config, lora, ids, mask):
    """``[B, H]`` float32 hidden state (after the final norm) at each row's last real token."""
    h = decoder.forward(params, config, ids, mask, lora)[0]
    last = jnp.max(jnp.where(mask > 0, jnp.arange(ids.shape[1]), 0), axis=-1)
    return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def hidden_fn(params, config, lora: LoRA | None, probe_ids, probe_mask, *, delta_batch_probes: int | None = None):
    """`_last_hidden` of every probe: ``[P, H]`` for no or one adapter, ``[N, P, H]`` for a stacked batch
    (vmapped over the adapter axis). ``delta_batch_probes`` runs the probes in chunks of that many
    (`lax.map`, each chunk rematerialised in the backward pass), which bounds activation memory."""
    if lora is not None and lora.batch_shape:
        if len(lora.batch_shape) != 1:
            raise ValueError(f"behavioural deltas take one adapter or a stack along one axis; got batch shape "
                             f"{lora.batch_shape}")
        return jax.vmap(lambda l: hidden_fn(params, config, l, probe_ids, probe_mask,
                                            delta_batch_probes=delta_batch_probes))(lora)
    p, s = probe_ids.shape
    chunk = delta_batch_probes
    if not chunk or chunk >= p:
        return _last_hidden(params, config, lora, probe_ids, probe_mask)
    n = -(-p // chunk)
    pad = ((0, n * chunk - p), (0, 0))  # fully masked rows: finite, and sliced off below
    xs = (jnp.pad(probe_ids, pad).reshape(n, chunk, s), jnp.pad(probe_mask, pad).reshape(n, chunk, s))
    out = jax.lax.map(jax.checkpoint(lambda x: _last_hidden(params, config, lora, *x)), xs)
    return out.reshape(n * chunk, -1)[:p]


def delta_fn(params, config, lora: LoRA, probe_ids, probe_mask, base_hidden, *,
             delta_batch_probes: int | None = None):
    """Mean over probes of ``h(adapted) − base_hidden``: ``[H]`` for one adapter, ``[N, H]`` for a stack.
    ``base_hidden`` is ``hidden_fn(params, config, None, probe_ids, probe_mask)`` ``[P, H]``. Pure; call it
    inside your own jit with ``config`` static."""
    h = hidden_fn(params, config, lora, probe_ids, probe_mask, delta_batch_probes=delta_batch_probes)
    return jnp.mean(h - base_hidden, axis=-2)


@functools.partial(jax.jit, static_argnames=("config",))
def _hidden_group(params, config, lora, ids, mask):
    """`hidden_fn` of one group of probes, rematerialised in a backward pass (the memory of one group)."""
    return jax.checkpoint(lambda p, l: hidden_fn(p, config, l, ids, mask))(params, lora)


def _probe_groups(probes, size: int | None) -> list[tuple[np.ndarray, int]]:
    """The probes in groups of ``size`` (all when None), shortest first: ``(rows, width)`` with ``width`` the
    multiple of 16 that holds the group's longest probe. Probes are left-padded and positions come from the
    mask, so a group runs on its last ``width`` columns: its short probes skip the long ones' padding."""
    lengths = np.asarray(probes.mask).sum(-1)
    order = np.argsort(lengths, kind="stable")
    size = size or len(order)
    groups = [order[s:s + size] for s in range(0, len(order), size)]
    return [(rows, min(probes.ids.shape[1], -(-int(lengths[rows].max()) // 16) * 16)) for rows in groups]


# --- BaseModel-level entry points -------------------------------------------------------------------

def probe_hidden(base_model, probes, lora: LoRA | None = None, *, delta_batch_probes: int | None = None) -> jax.Array:
    """Final hidden state at each probe's last real token, float32: ``[P, H]`` (``lora`` None or one
    adapter) or ``[N, P, H]`` (a stacked batch of N adapters). The probes run ``delta_batch_probes`` at a
    time, shortest first, each group trimmed to its own width (`_probe_groups`)."""
    ids, mask = np.asarray(probes.ids), np.asarray(probes.mask)
    groups = _probe_groups(probes, delta_batch_probes)
    parts = [_hidden_group(base_model.params, base_model.config, lora, jnp.asarray(ids[rows, -width:]),
                           jnp.asarray(mask[rows, -width:])) for rows, width in groups]
    back = np.argsort(np.concatenate([rows for rows, _ in groups]))  # the probes' own order
    return jnp.take(jnp.concatenate(parts, axis=-2), back, axis=-2)


def behavioural_delta(base_model, lora: LoRA, probes, base_hidden=None, *,
                      delta_batch_probes: int | None = None) -> jax.Array:
    """Mean over probes of h(adapted) − h(base): ``[H]`` for one adapter, ``[N, H]`` for a stacked batch.
    ``base_hidden`` (``probe_hidden(base_model, probes)``) saves re-running the base model."""
    if base_hidden is None:
        base_hidden = probe_hidden(base_model, probes, delta_batch_probes=delta_batch_probes)
    hidden = probe_hidden(base_model, probes, lora, delta_batch_probes=delta_batch_probes)
    return jnp.mean(hidden - jnp.asarray(base_hidden), axis=-2)


def batched_deltas(base_model, probes, folders: Sequence[str], *, batch_size: int = 8, base_hidden=None,
                   delta_batch_probes: int | None = None):
    """Yield ``(indices, deltas [n, H] float32 numpy)`` for the PEFT folders, ``batch_size`` adapters per
    stacked `behavioural_delta` call (the last batch padded to the same shape: one compilation)."""
    from llgbm_jax.lora.peft import load_peft_adapter

    if base_hidden is None:
        base_hidden = probe_hidden(base_model, probes, delta_batch_probes=delta_batch_probes)
    size = min(batch_size, len(folders))
    for start in range(0, len(folders), size):
        loras = [load_peft_adapter(os.fspath(f), base_model.config) for f in folders[start:start + size]]
        n = len(loras)
        loras += loras[:1] * (size - n)
        deltas = behavioural_delta(base_model, stack_any(loras), probes, base_hidden,
                                   delta_batch_probes=delta_batch_probes)
        yield range(start, start + n), np.asarray(deltas)[:n]


# --- the cache ----------------------------------------------------------------------------------------

class DeltaCache:
    """Behavioural deltas of PEFT adapter folders, one ``.npz`` per entry under ``directory``.

    An entry's key is (adapter content hash, probe hash, base model hash, dtype, `DELTA_VERSION`); its file
    name is a hash of the key and the file stores the key, which is checked on read, so an entry whose key
    changed in any part is never read back. Entries are written atomically; an unreadable (partial)
    file counts as missing. ``computed`` and ``hits`` count entries since construction.
    """

    def __init__(self, directory: str):
        self.directory = os.fspath(directory)
        self.computed = 0
        self.hits = 0

    def key(self, base_model, probes, adapter_hash: str) -> dict:
        return {"adapter": adapter_hash, "probes": probes.hash, "model": model_hash(base_model),
                "dtype": jnp.dtype(base_model.dtype).name, "delta_version": DELTA_VERSION}

    def path(self, key: dict) -> str:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:40]
        return os.path.join(self.directory, name + ".npz")

    def _read(self, key: dict, hidden_size: int) -> np.ndarray | None:
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path) as f:
                stored, delta = json.loads(str(f["key"])), np.asarray(f["delta"])
            if stored != key:
                raise ValueError("its stored key is another entry's")
            if delta.shape != (hidden_size,) or delta.dtype != np.float32:
                raise ValueError(f"delta {delta.dtype} {delta.shape}, expected float32 ({hidden_size},)")
        except Exception as e:  # a partial or foreign file: recompute and overwrite
            warn_unusable(path, e)
            return None
        return delta

    def _write(self, key: dict, delta: np.ndarray, source: str) -> None:
        with atomic_file(self.path(key), ".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, key=np.asarray(json.dumps(key, sort_keys=True)), delta=delta, source=np.asarray(source))

    def get_many(self, base_model, probes, adapters: Sequence[str], *, batch_size: int = 8,
                 show_progress: bool = True, delta_batch_probes: int | None = None) -> np.ndarray:
        """``[N, H]`` float32 deltas of the PEFT folders ``adapters``; missing entries are computed
        ``batch_size`` adapters per call (one stacked `behavioural_delta`) and stored."""
        from tqdm.auto import tqdm

        hidden_size = base_model.config.hidden_size
        keys = [self.key(base_model, probes, lora_hash(a)) for a in adapters]
        out = np.zeros((len(adapters), hidden_size), np.float32)
        missing = []
        for i, key in enumerate(keys):
            delta = self._read(key, hidden_size)
            if delta is None:
                missing.append(i)
            else:
                out[i] = delta
        self.hits += len(adapters) - len(missing)
        if not missing:
            return out
        bar = tqdm(total=len(missing), desc="behavioural deltas", unit="adapter", disable=not show_progress)
        for rows, deltas in batched_deltas(base_model, probes, [adapters[i] for i in missing], batch_size=batch_size,
                                           delta_batch_probes=delta_batch_probes):
            for j, delta in zip(rows, deltas):
                i = missing[j]
                out[i] = delta
                self._write(keys[i], delta, os.fspath(adapters[i]))
            self.computed += len(rows)
            bar.update(len(rows))
        bar.close()
        return out

    def get_lora(self, base_model, probes, lora: LoRA, *, base_hidden=None, delta_batch_probes: int | None = None,
                 source: str = "LoRA") -> np.ndarray:
        """``[H]`` delta of one in-memory adapter (batch shape ``()``), keyed by its content (`lora_hash`)."""
        key = self.key(base_model, probes, lora_hash(lora))
        delta = self._read(key, base_model.config.hidden_size)
        if delta is not None:
            self.hits += 1
            return delta
        delta = np.asarray(behavioural_delta(base_model, lora, probes, base_hidden,
                                             delta_batch_probes=delta_batch_probes), np.float32)
        self._write(key, delta, source)
        self.computed += 1
        return delta

    def get(self, base_model, probes, adapter: str, **kw) -> np.ndarray:
        """``[H]`` delta of one PEFT folder (see `get_many`)."""
        return self.get_many(base_model, probes, [adapter], batch_size=1, **kw)[0]
