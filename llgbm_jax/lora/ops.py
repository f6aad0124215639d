"""Operations on `LoRA` pytrees: the scaling folded into B (adapters of any ranks and alphas in one batch), the
exact mean of several adapters' ΔW as one adapter, the gauge transform (other factors, the same ΔW), and content
hashes of adapters."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llgbm_jax.lora.adapter import ALL_MODULES, LoRA, LoRAConfig
from llgbm_jax.utils.io import hash_arrays


def fold_scaling(lora: LoRA, rank: int | None = None) -> LoRA:
    """The same ΔW with every slot's scaling multiplied into B and the rank axis zero-padded to ``rank``
    (default: the adapter's own): a uniform config with scaling 1 (``alpha = rank``), so adapters of
    different ranks, alphas and rsLoRA settings can be stacked into one batch."""
    rank = rank or lora.config.max_rank
    if rank < lora.config.max_rank:
        raise ValueError(f"fold_scaling: rank {rank} is below the adapter's rank {lora.config.max_rank}")
    pad = rank - lora.config.max_rank
    A, B = {}, {}
    for m in lora.modules:
        s = jnp.asarray(lora.scales(m), lora.B[m].dtype)  # [L, r]
        a, b = lora.A[m], lora.B[m] * s[:, None, :]
        widths = [(0, 0)] * a.ndim
        A[m] = jnp.pad(a, widths[:-2] + [(0, pad), (0, 0)])
        B[m] = jnp.pad(b, widths[:-1] + [(0, pad)])
    return LoRA(A=A, B=B, config=LoRAConfig(rank=rank, alpha=float(rank), target_modules=lora.modules))


def _random_gauge(key, shape: tuple[int, ...], spread: float) -> tuple[jax.Array, jax.Array]:
    """``(G, G⁻¹)`` of shape ``shape + (r, r)``: G = Q₁ diag(s) Q₂ with Haar-like orthogonal Q₁, Q₂ and singular
    values s in [1/spread, spread] (condition number at most spread²); the inverse is Q₂ᵀ diag(1/s) Q₁ᵀ, exactly."""
    k1, k2, k3 = jax.random.split(key, 3)
    r = shape[-1]
    q1, q2 = (jnp.linalg.qr(jax.random.normal(k, shape[:-1] + (r, r)))[0] for k in (k1, k2))
    s = jnp.exp(jax.random.uniform(k3, shape[:-1] + (r,), minval=-np.log(spread), maxval=np.log(spread)))
    g = (q1 * s[..., None, :]) @ q2
    g_inv = (jnp.swapaxes(q2, -1, -2) / s[..., None, :]) @ jnp.swapaxes(q1, -1, -2)
    return g, g_inv


def gauge_transform(lora: LoRA, key, spread: float = 2.0) -> LoRA:
    """The same adapter in another gauge: ``(B G⁻¹, G A)`` with a random well-conditioned invertible G (singular
    values in [1/spread, spread]) per adapter, layer and module. ΔW = B G⁻¹ G A = B A is unchanged (up to float
    rounding) while the factors are not: a loss on raw factors sees a different target, a loss on ΔW the same one.
    G acts on each layer's true rank and is the identity on rank padding, so padding stays zero."""
    A, B = {}, {}
    L = lora.num_layers
    for i, m in enumerate(lora.modules):
        a, b = lora.A[m], lora.B[m]  # [..., L, r, in], [..., L, out, r]
        lead, r = a.shape[:-2], a.shape[-2]
        ranks = np.asarray(lora.config.ranks(m, L))
        g = g_inv = jnp.broadcast_to(jnp.eye(r, dtype=jnp.float32), lead + (r, r))
        for rho in sorted(set(ranks.tolist())):
            small, small_inv = _random_gauge(jax.random.fold_in(jax.random.fold_in(key, i), rho), lead + (rho,), spread)
            here = jnp.asarray(ranks == rho)[:, None, None]  # the layers of rank rho
            g = jnp.where(here, g.at[..., :rho, :rho].set(small), g)
            g_inv = jnp.where(here, g_inv.at[..., :rho, :rho].set(small_inv), g_inv)
        A[m] = (g @ a.astype(jnp.float32)).astype(a.dtype)
        B[m] = (b.astype(jnp.float32) @ g_inv).astype(b.dtype)
    return LoRA(A=A, B=B, config=lora.config)


def mean_lora(loras: list[LoRA]) -> LoRA:
    """The mean of the adapters' ΔW as one adapter, exactly: factors concatenated along the rank axis
    (rank = sum of the ranks), each B scaled by its own scaling / N. Modules missing from an adapter
    count as zero updates."""
    if not loras:
        raise ValueError("mean_lora needs at least one adapter")
    modules = tuple(m for m in ALL_MODULES if any(m in l.A for l in loras))
    folded = [fold_scaling(l) for l in loras]
    n = len(loras)
    A, B = {}, {}
    for m in modules:
        ref = next(f for f in folded if m in f.A)
        a_list, b_list = [], []
        for f in folded:
            if m in f.A:
                a_list.append(f.A[m])
                b_list.append(f.B[m] / n)
            else:  # a zero-rank stand-in keeps the shapes aligned
                a_list.append(jnp.zeros(ref.A[m].shape[:-2] + (1, ref.A[m].shape[-1]), ref.A[m].dtype))
                b_list.append(jnp.zeros(ref.B[m].shape[:-1] + (1,), ref.B[m].dtype))
        A[m], B[m] = jnp.concatenate(a_list, axis=-2), jnp.concatenate(b_list, axis=-1)
    ranks = {A[m].shape[-2] for m in modules}
    r = max(ranks)
    for m in modules:  # modules absent from some adapters have a smaller total rank: zero-pad
        A[m] = jnp.pad(A[m], [(0, 0)] * (A[m].ndim - 2) + [(0, r - A[m].shape[-2]), (0, 0)])
        B[m] = jnp.pad(B[m], [(0, 0)] * (B[m].ndim - 1) + [(0, r - B[m].shape[-1])])
    return LoRA(A=A, B=B, config=LoRAConfig(rank=r, alpha=float(r), target_modules=modules))


def stack_any(loras: Sequence[LoRA]) -> LoRA:
    """Stack adapters of any ranks, alphas, rsLoRA settings and target modules into one float32 batch with
    the same ΔW each: every slot's scaling folded into B, ranks zero-padded to the largest, absent modules
    zero (what `fold_scaling` + `stack_loras` do, in numpy: no compilation per adapter shape)."""
    rank = max(l.config.max_rank for l in loras)
    modules = tuple(m for m in ALL_MODULES if any(m in l.A for l in loras))
    A, B = {}, {}
    for m in modules:
        a_ref, b_ref = next((l.A[m], l.B[m]) for l in loras if m in l.A)
        A[m] = np.zeros((len(loras),) + a_ref.shape[:-2] + (rank, a_ref.shape[-1]), np.float32)
        B[m] = np.zeros((len(loras),) + b_ref.shape[:-1] + (rank,), np.float32)
        for i, l in enumerate(loras):
            if m in l.A:
                r = l.config.max_rank
                A[m][i, ..., :r, :] = np.asarray(l.A[m], np.float32)
                B[m][i, ..., :r] = np.asarray(l.B[m], np.float32) * l.scales(m)[:, None, :].astype(np.float32)
    return LoRA(A={m: jnp.asarray(x) for m, x in A.items()}, B={m: jnp.asarray(x) for m, x in B.items()},
                config=LoRAConfig(rank=rank, alpha=float(rank), target_modules=modules))


def lora_hash(adapter) -> str:
    """sha256 of an adapter's content: for a PEFT folder the bytes of its weights file and
    ``adapter_config.json``, for a `LoRA` its config and arrays (the two kinds never share a hash)."""
    from llgbm_jax.lora.peft import BIN_NAME, CONFIG_NAME, SAFETENSORS_NAME

    h = hashlib.sha256()
    if isinstance(adapter, LoRA):
        h.update(b"lora:" + json.dumps(dataclasses.asdict(adapter.config)).encode())
        hash_arrays(h, [(f"{f}.{m}", getattr(adapter, f)[m]) for m in adapter.modules for f in "AB"])
        return h.hexdigest()
    folder = os.fspath(adapter)
    weights = os.path.join(folder, SAFETENSORS_NAME)
    if not os.path.exists(weights):
        weights = os.path.join(folder, BIN_NAME)
    for path in (os.path.join(folder, CONFIG_NAME), weights):
        try:
            with open(path, "rb") as f:
                h.update(f"{os.path.basename(path)}:".encode())
                for block in iter(functools.partial(f.read, 1 << 22), b""):
                    h.update(block)
        except FileNotFoundError:
            raise FileNotFoundError(f"{folder}: not a PEFT adapter folder (no {os.path.basename(path)})") from None
    return h.hexdigest()
