"""Losses on generated LoRAs: ΔW MSE from the factors, raw-factor MSE, behavioural delta, and their mix.

The ΔW error of one module and layer is ``‖D‖²_F``, ``D = ΔW_p − ΔW_t = X Yᵀ`` with the factors of both sides
side by side (``X = [B_p, B_t]``, ``Y = [A_pᵀ s_p, −A_tᵀ s_t]``, or the transpose: ``Y`` is always the side with
fewer rows, ``n = min(in, out)``, and carries the per-slot scalings ``s`` of `LoRA.scales`). With ``Y = Q R``
(``Q`` orthonormal, ``R`` k × k, ``k = r_p + r_t``), ``‖D‖² = ‖X Rᵀ‖²``: an ``m × k`` product, no ``out × in``
matrix. The Gram form ``tr((XᵀX)(YᵀY))`` would be cheaper but cancels catastrophically when prediction ≈
teacher (its float32 error grows like eps/δ² for a relative difference δ: 3e-2 at δ = 1e-3); the ``R`` form
only loses what the difference of the two products itself loses (eps/δ).

``R`` comes from shifted CholeskyQR2 written in XLA operations (Gram, k × k Cholesky with a small shift,
``Q₁ = Y R₁⁻¹``, Gram, Cholesky; the k × k steps batched over modules): matmul-bound, no LAPACK call (on CPU
jax hands ``jnp.linalg.qr`` to OpenBLAS, which was slow for these tall, thin, batched matrices and hung when
several modules' QRs ran at once), and exact for rank-deficient ``Y`` (``B_p = 0`` at the generator's
initialisation, rank padding: the shift keeps the first Cholesky defined, the second drops null directions).
``jnp.linalg.qr``'s VJP divides by R's diagonal and is NaN there anyway; `_sq_norms` has its own VJP, the exact
gradient in Gram form (``∂/∂X = 2 X (YᵀY)``, ``∂/∂Y = 2 Y (XᵀX)``), which loses no more than the forward
product does (eps/δ).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llgbm_jax.lora.adapter import ALL_MODULES, LoRA, stack_loras
from llgbm_jax.lora.ops import fold_scaling

_HI = jax.lax.Precision.HIGHEST
_SHIFT = 1e-6  # first Cholesky: G + _SHIFT · tr(G) · I (above float32 Gram rounding, far below any real direction)
_DROP = 1e-6  # second Cholesky: pivots below this (of Q₁ᵀQ₁, whose eigenvalues lie in [0, 1]) are null directions
_CHUNK_BYTES = 8 * 2**20  # temporaries of one chunk of matrices (see `_chunk_size`)

# --- the factored core: k × k linear algebra in XLA operations ----------------------------------------------


def _cholesky(G, floor, drop: bool):
    """Upper ``R`` with ``RᵀR = G`` for a batch of symmetric k × k ``G``, and ``R⁻¹``. A pivot at or below
    ``floor`` (``[...]``) is raised to it (``drop=False``) or makes its row of ``R`` zero (``drop=True``; the
    inverse is then meaningless). ``R⁻ᵀ`` is built row by row beside ``R`` (forward substitution)."""
    k = G.shape[-1]
    cols = jnp.arange(k)

    def step(j, carry):
        S, R, Wt = carry
        d = S[..., j, j]
        keep = d > floor
        piv = jnp.sqrt(jnp.where(keep, d, 1.0) if drop else jnp.maximum(d, floor))
        row = jnp.where(cols >= j, S[..., j, :], 0.0) / piv[..., None]
        row = jnp.where(keep[..., None], row, 0.0) if drop else row.at[..., j].set(piv)
        R = R.at[..., j, :].set(row)
        # (R⁻ᵀ)[j] = (e_j − Σ_{l<j} R[l, j] (R⁻ᵀ)[l]) / R[j, j]
        col = jnp.where(cols < j, R[..., :, j], 0.0)
        wt = (jnp.where(cols == j, 1.0, 0.0) - jnp.einsum("...l,...lc->...c", col, Wt, precision=_HI)) / piv[..., None]
        return S - row[..., :, None] * row[..., None, :], R, Wt.at[..., j, :].set(wt)

    zeros = jnp.zeros_like(G)
    _, R, Wt = jax.lax.fori_loop(0, k, step, (G, zeros, zeros))
    return R, jnp.swapaxes(Wt, -1, -2)


def _gram(Y):
    return jnp.einsum("...nk,...nl->...kl", Y, Y, precision=_HI)


def _qr_r(Ys, G):
    """``R[i]`` (k × k) with ``R[i]ᵀR[i] = Ys[i]ᵀYs[i]`` in the backward-stable sense of a QR, from the
    ``[..., n_i, k]`` matrices ``Ys`` and their stacked Grams ``G``: shifted CholeskyQR2 (Q₁ = Y R₁⁻¹ with an
    explicit triangular inverse: one matmul, and as accurate here as a substitution)."""
    eye = jnp.eye(G.shape[-1], dtype=G.dtype)
    tiny = jnp.finfo(G.dtype).tiny
    shift = _SHIFT * jnp.trace(G, axis1=-2, axis2=-1) + tiny
    R1, W = _cholesky(G + shift[..., None, None] * eye, 0.5 * shift + tiny, drop=False)  # no subnormal floor
    G2 = jnp.stack([_gram(jnp.matmul(Y, w, precision=_HI)) for Y, w in zip(Ys, W)])
    return jnp.matmul(_cholesky(G2, _DROP, drop=True)[0], R1, precision=_HI)


class _Layout:
    """Einsum spellings for one module: the Y side (QR'd, scaled) is A (``qr_on_a``: ``Y_i = A_iᵀ``) or B."""

    def __init__(self, qr_on_a: bool):
        self.qr_on_a = qr_on_a

    def y(self, b, a, s):  # Y_i s_i  [..., n, r]
        return (jnp.swapaxes(a, -1, -2) if self.qr_on_a else b) * s[:, None, :]

    def x_times(self, b, a, W):  # X_i W_iᵀ for W [..., k, r] -> [..., m, k]
        return (jnp.einsum("...mr,...kr->...mk", b, W, precision=_HI) if self.qr_on_a
                else jnp.einsum("...rm,...kr->...mk", a, W, precision=_HI))

    def x_gram(self, bj, aj, bi, ai):  # X_jᵀ X_i  [..., r_j, r_i]
        return (jnp.einsum("...mr,...ms->...rs", bj, bi, precision=_HI) if self.qr_on_a
                else jnp.einsum("...rm,...sm->...rs", aj, ai, precision=_HI))

    def x_grad(self, bj, aj, W):  # X_j W for W [..., r_j, r_i], in X_i's layout
        return (jnp.einsum("...mr,...rs->...ms", bj, W, precision=_HI) if self.qr_on_a
                else jnp.einsum("...rm,...rs->...sm", aj, W, precision=_HI))

    def y_grad(self, bj, aj, W):  # Y_j W for W [..., r_j, r_i], in Y_i's layout
        return (jnp.einsum("...rn,...rs->...sn", aj, W, precision=_HI) if self.qr_on_a
                else jnp.einsum("...nr,...rs->...ns", bj, W, precision=_HI))


def _slices(As):
    ends = np.cumsum([a.shape[-2] for a in As])
    return [slice(e - a.shape[-2], e) for e, a in zip(ends, As)]


def _chunk_size(P: int, Bs, As) -> int:
    """Matrices per chunk: the largest divisor of ``P`` whose temporaries (Y, Q₁ and M of every module, about
    ``4 k (m + 2n)`` bytes a matrix) fit in `_CHUNK_BYTES`."""
    k = sum(a.shape[-2] for a in As[0])
    per_matrix = 4 * k * sum(max(b[0].shape[-2], a[0].shape[-1]) + 2 * min(b[0].shape[-2], a[0].shape[-1])
                             for b, a in zip(Bs, As))
    return max([c for c in range(1, P + 1) if P % c == 0 and c * per_matrix <= _CHUNK_BYTES] or [1])


def _map_chunks(fn, c: int, *trees):
    """``fn(*trees)`` over the leading axis in chunks of ``c`` (`jax.lax.map`; inputs and outputs reshaped, not
    copied), so that temporaries scale with the chunk, not with the whole batch of adapters and layers."""
    P = jax.tree_util.tree_leaves(trees)[0].shape[0]
    if c == P:
        return fn(*trees)
    split = lambda x: x.reshape((P // c, c) + x.shape[1:])
    out = jax.lax.map(lambda xs: fn(*xs), jax.tree_util.tree_map(split, trees))
    return jax.tree_util.tree_map(lambda x: x.reshape((P,) + x.shape[2:]), out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sq_norms(qr_on_a: tuple[bool, ...], Bs, As, ss):
    """``‖Σ_i B_i diag(s_i) A_i‖²_F`` per module and matrix: a tuple of ``[P]``. Per module (outer tuples) the
    pieces i: B_i ``[P, out, r_i]``, A_i ``[P, r_i, in]``, s_i ``[P, r_i]`` (constants: zero cotangent); the
    modules share ``P`` and the piece ranks, so the k × k work runs once for all of them."""
    return _sq_norms_fwd(qr_on_a, Bs, As, ss)[0]


def _sq_norms_fwd(qr_on_a, Bs, As, ss):
    lays, sls = [_Layout(q) for q in qr_on_a], _slices(As[0])

    def chunk(Bs, As, ss):
        Ys = [jnp.concatenate([lay.y(b, a, s) for b, a, s in zip(*piece)], -1) for lay, *piece in zip(lays, Bs, As, ss)]
        G = jnp.stack([_gram(Y) for Y in Ys])
        R = _qr_r(Ys, G)
        out = []
        for lay, bm, am, Rm in zip(lays, Bs, As, R):
            M = sum(lay.x_times(b, a, Rm[..., sl]) for b, a, sl in zip(bm, am, sls))
            out.append(jnp.sum(M * M, axis=(-2, -1)))
        return tuple(out), jnp.moveaxis(G, 0, 1)

    out, G = _map_chunks(chunk, _chunk_size(Bs[0][0].shape[0], Bs, As), Bs, As, ss)
    return out, (Bs, As, ss, G)


def _sq_norms_bwd(qr_on_a, res, gs):
    Bs, As, ss, G = res
    sls = _slices(As[0])

    def chunk(Bs, As, ss, G, gs):
        dBs, dAs = [], []
        for q, bm, am, sm, Gm, g in zip(qr_on_a, Bs, As, ss, jnp.moveaxis(G, 1, 0), gs):
            lay, g2 = _Layout(q), 2 * g[:, None, None]
            dX, dY = [], []
            for bi, ai, si, sli in zip(bm, am, sm, sls):
                # ∂/∂X_i = 2 D Y_i s_i = 2 Σ_j X_j (YᵀY)[j, i];  ∂/∂Y_i = 2 Dᵀ X_i s_i = 2 Σ_j Y_j s_j (X_jᵀ X_i) s_i
                dX.append(g2 * sum(lay.x_grad(bj, aj, Gm[:, slj, sli]) for bj, aj, slj in zip(bm, am, sls)))
                dY.append(g2 * sum(lay.y_grad(bj, aj, sj[:, :, None] * lay.x_gram(bj, aj, bi, ai))
                                   for bj, aj, sj in zip(bm, am, sm)) * (si[:, :, None] if q else si[:, None, :]))
            dBs.append(tuple(dX if q else dY))  # qr_on_a: X = B, Y = A
            dAs.append(tuple(dY if q else dX))
        return tuple(dBs), tuple(dAs)

    dBs, dAs = _map_chunks(chunk, _chunk_size(G.shape[0], Bs, As), Bs, As, ss, G, gs)
    return dBs, dAs, jax.tree_util.tree_map(jnp.zeros_like, ss)


_sq_norms.defvjp(_sq_norms_fwd, _sq_norms_bwd)


# --- pairing a prediction with a teacher --------------------------------------------------------------------


def _dtype(*arrays):
    return jnp.result_type(jnp.float32, *arrays)


def _side(lora: LoRA, m: str, lead: tuple, dtype, sign: float = 1.0):
    """``(B, A, s)`` of one module broadcast to the leading axes ``lead`` (adapter batch and layers), flattened
    to ``[P, ...]`` and cast to ``dtype``; ``s`` (``[P, r]``) times ``sign``."""
    flat = lambda x, tail: jnp.broadcast_to(x.astype(dtype), lead + x.shape[-tail:]).reshape((-1,) + x.shape[-tail:])
    s = jnp.asarray(sign * lora.scales(m), dtype)
    return flat(lora.B[m], 2), flat(lora.A[m], 2), flat(s, 1)


def _pair(pred: LoRA, teacher: LoRA) -> tuple[tuple[int, ...], dict[str, tuple[int, int]]]:
    """Check that ``pred`` and ``teacher`` fit together; returns the common adapter batch shape and
    ``{module: (out, in)}`` over the union of their modules."""
    if pred.num_layers != teacher.num_layers:
        raise ValueError(f"pred has {pred.num_layers} layers, teacher has {teacher.num_layers}")
    try:
        batch = tuple(np.broadcast_shapes(pred.batch_shape, teacher.batch_shape))
    except ValueError:
        raise ValueError(f"adapter batch shapes do not broadcast: pred {pred.batch_shape}, "
                         f"teacher {teacher.batch_shape}") from None
    shapes = {}
    for m in ALL_MODULES:
        io = {(l.B[m].shape[-2], l.A[m].shape[-1]) for l in (pred, teacher) if m in l.A}
        if len(io) > 1:
            raise ValueError(f"{m}: pred and teacher ΔW shapes (out, in) differ: {sorted(io)}")
        if io:
            shapes[m] = io.pop()
    return batch, shapes


def _module_sqs(loras_signs, shapes: dict, batch: tuple) -> dict[str, jax.Array]:
    """``{m: ‖Σ sign·ΔW_m(lora)‖²}`` per ``[*batch, L]`` over the adapters that have ``m``, for the modules of
    ``shapes`` (``{m: (out, in)}``); modules with the same pieces share one `_sq_norms` call."""
    lead = batch + (loras_signs[0][0].num_layers,)
    groups = {}
    for m, (out, inp) in shapes.items():
        present = [(l, sign) for l, sign in loras_signs if m in l.A]
        dtype = _dtype(*[l.A[m] for l, _ in present], *[l.B[m] for l, _ in present])
        Bs, As, ss = zip(*[_side(l, m, lead, dtype, sign) for l, sign in present])
        key = (tuple(a.shape[-2] for a in As), dtype)
        groups.setdefault(key, []).append((m, inp <= out, Bs, As, ss))
    result = {}
    for members in groups.values():
        ms, qr_on_a, Bs, As, ss = zip(*members)
        result.update(zip(ms, _sq_norms(qr_on_a, Bs, As, ss)))
    return {m: result[m].reshape(lead) for m in shapes}


def _inner(x: LoRA, y: LoRA, m: str, batch: tuple) -> jax.Array:
    """``⟨ΔW_x, ΔW_y⟩_F`` of module ``m`` summed over layers, per adapter (``batch``), in r × r Gram form:
    ``tr((s_x B_xᵀ B_y s_y)(A_y A_xᵀ))``. With ``x = y`` it is ``‖ΔW‖²`` with no difference of nearly equal
    products to cancel: accurate, and a fraction of the cost of `_module_sqs`."""
    dtype = _dtype(x.A[m], x.B[m], y.A[m], y.B[m])
    lead = batch + (x.num_layers,)
    bx, ax, sx = _side(x, m, lead, dtype)
    by, ay, sy = _side(y, m, lead, dtype)
    gb = jnp.einsum("Pop,Pot->Ppt", bx * sx[:, None, :], by * sy[:, None, :], precision=_HI)
    ga = jnp.einsum("Ppi,Pti->Ppt", ax, ay, precision=_HI)
    return jnp.sum((gb * ga).reshape(lead + (-1,)), axis=(-2, -1))


@jax.jit
def delta_w_stats(pred: LoRA, teacher: LoRA) -> dict[str, dict[str, jax.Array]]:
    """Per module, per adapter (arrays of the common batch shape), summed over layers, all from the factors:
    ``sq_err`` = ‖ΔW_p − ΔW_t‖², ``pred_sq_norm``, ``teacher_sq_norm`` and ``inner`` = ⟨ΔW_p, ΔW_t⟩_F
    (= tr((s_t B_tᵀ B_p s_p)(A_p A_tᵀ))). A module on one side only counts the other side's ΔW as 0."""
    batch, shapes = _pair(pred, teacher)
    errs = _module_sqs([(pred, 1.0), (teacher, -1.0)], shapes, batch)
    pred_sq = _module_sqs([(pred, 1.0)], {m: shapes[m] for m in pred.modules}, batch)
    teacher_sq = _module_sqs([(teacher, 1.0)], {m: shapes[m] for m in teacher.modules}, batch)
    stats, zero = {}, jnp.zeros(batch, jnp.float32)
    for m in shapes:
        s = {"sq_err": errs[m].sum(-1)}
        for key, l, sq in (("pred_sq_norm", pred, pred_sq), ("teacher_sq_norm", teacher, teacher_sq)):
            s[key] = sq[m].sum(-1) if m in l.A else zero
        s["inner"] = _inner(pred, teacher, m, batch) if m in pred.A and m in teacher.A else zero
        stats[m] = s
    return stats


def delta_w_cosine(pred: LoRA, teacher: LoRA) -> dict[str, jax.Array]:
    """Per module, per adapter: cosine of ΔW_p and ΔW_t over all layers (the flattened ``[L, out, in]``);
    0 where either is zero."""
    out = {}
    for m, s in delta_w_stats(pred, teacher).items():
        norm = jnp.sqrt(s["pred_sq_norm"] * s["teacher_sq_norm"])
        out[m] = jnp.where(norm > 0, s["inner"] / jnp.where(norm > 0, norm, 1.0), 0.0)
    return out


def delta_w_relative_error(pred: LoRA, teacher: LoRA) -> dict[str, jax.Array]:
    """Per module, per adapter: ``‖ΔW_p − ΔW_t‖_F / ‖ΔW_t‖_F`` over all layers (inf where the teacher's is 0)."""
    return {m: jnp.sqrt(s["sq_err"] / s["teacher_sq_norm"]) for m, s in delta_w_stats(pred, teacher).items()}


# --- losses -----------------------------------------------------------------------------------------------------


def stack_teachers(loras: list[LoRA], rank: int | None = None) -> LoRA:
    """Teachers of any ranks, alphas and rsLoRA settings as one batch: each one's scaling folded into B and
    its rank axis zero-padded to ``rank`` (default: the largest), then stacked (`fold_scaling`, `stack_loras`)."""
    if not loras:
        raise ValueError("stack_teachers needs at least one adapter")
    modules = {l.modules for l in loras}
    if len(modules) > 1:
        raise ValueError(f"stack_teachers: the teachers target different modules: {sorted(modules)}")
    rank = rank or max(l.config.max_rank for l in loras)
    return stack_loras([fold_scaling(l, rank) for l in loras])


class DeltaWLoss:
    """Mean squared error of ΔW = scaling·B@A between prediction and teacher, over all layers and modules,
    from the factors (see the module docstring); differentiable and jit-able.

    Each side uses its own per-slot scaling (`LoRA.scales`: per-layer ranks and alphas, rsLoRA), the ranks
    may differ, the teacher's adapter batch broadcasts against the prediction's, and a module present on one
    side only counts fully. ``normalize=None``: total squared error / number of ΔW elements (modules, layers,
    adapters). ``normalize="module"``: per adapter and module, the squared error summed over layers divided
    by the teacher's ‖ΔW‖² of that module (plus 1e-6 × that module's mean over the batch, so a zero teacher
    stays finite), averaged over modules and adapters, so that large modules do not drown small ones.
    ``normalize="batch"``: per module, the squared error summed over layers and adapters divided by the
    batch's teacher ‖ΔW‖² of that module, averaged over modules. Every module of the prediction must be in
    the teacher for either. They differ where several teachers share one condition, e.g. the checkpoints of
    a trajectory: "module" weights each by 1/‖ΔW‖², so the minimiser shrinks towards the smallest (earliest);
    "batch" and None minimise at their plain mean, but a batch's largest teachers weigh most.
    ``lora_alpha`` / ``lora_rank`` are the generator's own, kept for display (``.scaling``): the computation
    reads the scalings from the adapters.
    """

    NORMALIZE = (None, "module", "batch")

    def __init__(self, lora_alpha: float | None = None, lora_rank: int | None = None,
                 normalize: str | None = None):
        if normalize not in self.NORMALIZE:
            raise ValueError(f"DeltaWLoss: normalize={normalize!r}; choose one of {self.NORMALIZE}")
        self.lora_alpha, self.lora_rank, self.normalize = lora_alpha, lora_rank, normalize
        self.scaling = lora_alpha / lora_rank if lora_alpha is not None and lora_rank else None

    def __repr__(self):
        return f"DeltaWLoss(lora_alpha={self.lora_alpha}, lora_rank={self.lora_rank}, normalize={self.normalize!r})"

    def __call__(self, pred: LoRA, teacher: LoRA) -> jax.Array:
        batch, shapes = _pair(pred, teacher)
        errs = {m: e.sum(-1) for m, e in _module_sqs([(pred, 1.0), (teacher, -1.0)], shapes, batch).items()}
        if self.normalize is None:
            count = math.prod(batch) * pred.num_layers * sum(o * i for o, i in shapes.values())
            return sum(e.sum() for e in errs.values()) / count
        missing = [m for m in shapes if m not in teacher.A]
        if missing:
            raise ValueError(f"DeltaWLoss(normalize={self.normalize!r}): the teacher has no {missing}, so their "
                             f"relative error is undefined; use normalize=None or give the teacher these modules")
        fixed = jax.lax.stop_gradient(teacher)
        norms = jnp.stack([_inner(fixed, fixed, m, batch) for m in shapes])  # ‖ΔW_t‖² [modules, *batch]
        errs = jnp.stack([errs[m] for m in shapes])
        axes, tiny = tuple(range(1, norms.ndim)), jnp.finfo(norms.dtype).tiny
        if self.normalize == "batch":
            return jnp.mean(errs.sum(axes) / (norms.sum(axes) + tiny))
        eps = 1e-6 * jnp.mean(norms, axis=axes, keepdims=True) + tiny  # per module
        return jnp.mean(errs / (norms + eps))


class WeightLoss:
    """MSE between the predicted and teacher factors A and B (the Drag-and-Drop LLMs baseline; not gauge
    invariant): total squared difference over all modules' A and B / their number of elements.

    Both sides are compared with their scaling folded into B (`fold_scaling`), so a prediction with
    scaling alpha/r and a `stack_teachers` batch (scaling 1) mean the same ΔW by the same factors. The
    factor shapes must be equal (pad the teachers to the prediction's rank: ``stack_teachers(loras, rank=r)``);
    the teacher's adapter batch may broadcast.
    """

    def __call__(self, pred: LoRA, teacher: LoRA) -> jax.Array:
        if pred.modules != teacher.modules:
            raise ValueError(f"WeightLoss: pred modules {pred.modules} differ from teacher modules {teacher.modules}")
        pred, teacher = fold_scaling(pred), fold_scaling(teacher)
        total, count = 0.0, 0
        for m in pred.modules:
            for f in ("A", "B"):
                p, t = getattr(pred, f)[m], getattr(teacher, f)[m]
                if p.shape[-3:] != t.shape[-3:]:
                    raise ValueError(f"WeightLoss: {f}[{m}] shapes differ: pred {tuple(p.shape)}, teacher "
                                     f"{tuple(t.shape)} (pad the teachers with stack_teachers(..., rank="
                                     f"{pred.config.max_rank}))")
                try:
                    shape = np.broadcast_shapes(p.shape, t.shape)
                except ValueError:
                    raise ValueError(f"WeightLoss: {f}[{m}] adapter batch shapes do not broadcast: pred "
                                     f"{tuple(p.shape)}, teacher {tuple(t.shape)}") from None
                dtype = _dtype(p, t)
                total = total + jnp.sum((p.astype(dtype) - t.astype(dtype)) ** 2)
                count += math.prod(shape)
        return total / count


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeltaInputs:
    """The arrays the behavioural loss reads (the SFT loss only ``params``): the base model's parameters, the probes
    and the base model's hidden states on them (None where no behavioural loss is trained). Passed as an argument
    to a jitted step (not closed over, so not baked in as constants)."""

    params: Any
    probe_ids: Any
    probe_mask: Any
    base_hidden: Any


class DeltaLoss:
    """Behavioural loss: mean squared error between the predicted LoRA's behavioural delta on the probes
    (`llgbm_jax.conditions.deltas`: mean over probes of adapted − base final hidden state, ``[H]`` or ``[N, H]``)
    and a teacher delta of the same shape.

    ``DeltaLoss(base_model, probes)`` holds its arrays (``base_hidden``, `probe_hidden` of the base model, is
    computed once when not given); ``DeltaLoss(model_config=..., delta_batch_probes=...)`` holds none and is called
    with ``inputs=`` (a `DeltaInputs`), the pure form a jitted training step uses."""

    def __init__(self, base_model=None, probes=None, base_hidden=None, delta_batch_probes: int | None = None, *,
                 model_config=None):
        from llgbm_jax.conditions.deltas import probe_hidden

        if base_model is None and model_config is None:
            raise ValueError("DeltaLoss needs a base_model (with probes) or a model_config (then pass inputs=)")
        self.model_config = model_config or base_model.config
        self.base_model, self.probes, self.delta_batch_probes = base_model, probes, delta_batch_probes
        self.base_hidden = None
        if base_model is not None:
            if probes is None:
                raise ValueError("DeltaLoss(base_model, probes): the probes are missing")
            self.base_hidden = (probe_hidden(base_model, probes, delta_batch_probes=delta_batch_probes)
                                if base_hidden is None else jnp.asarray(base_hidden))

    @property
    def inputs(self) -> DeltaInputs:
        """This loss's own arrays as `DeltaInputs` (for a jitted step)."""
        if self.base_model is None:
            raise ValueError("this DeltaLoss holds no base model or probes: pass inputs=")
        return DeltaInputs(self.base_model.params, self.probes.ids, self.probes.mask, self.base_hidden)

    def __call__(self, pred: LoRA, teacher_delta: jax.Array, inputs: DeltaInputs | None = None) -> jax.Array:
        from llgbm_jax.conditions.deltas import behavioural_delta, delta_fn

        if inputs is not None:
            delta = delta_fn(inputs.params, self.model_config, pred, inputs.probe_ids, inputs.probe_mask,
                             inputs.base_hidden, delta_batch_probes=self.delta_batch_probes)
        elif self.base_model is not None:
            delta = behavioural_delta(self.base_model, pred, self.probes, self.base_hidden,
                                      delta_batch_probes=self.delta_batch_probes)
        else:
            raise ValueError("this DeltaLoss holds no base model or probes: pass inputs=")
        if delta.shape != jnp.shape(teacher_delta):
            raise ValueError(f"DeltaLoss: predicted delta {tuple(delta.shape)} and teacher delta "
                             f"{tuple(jnp.shape(teacher_delta))} differ in shape")
        diff = delta.astype(jnp.float32) - jnp.asarray(teacher_delta, jnp.float32)
        return jnp.mean(diff * diff)


class SFTLoss:
    """End-to-end loss: each generated adapter applied in the base model to a few training examples of its task
    (`SFTData.batch`: ``[B, rows, ...]``), next-token cross-entropy on their answers (`teachers.sft.sft_loss`; the
    decoder takes one adapter per row and differentiates through it). No teacher is involved. Called with the
    base model's parameters in ``inputs`` (`DeltaInputs`)."""

    def __init__(self, model_config, remat: bool | str = "dots"):
        self.model_config, self.remat = model_config, remat

    def __call__(self, pred: LoRA, rows: dict, inputs: DeltaInputs) -> jax.Array:
        from llgbm_jax.teachers.sft import sft_loss

        b, r = rows["ids"].shape[:2]
        if pred.batch_shape != (b,):
            raise ValueError(f"SFTLoss: {b} adapters' rows but a prediction of batch shape {pred.batch_shape}")
        flat = {k: v.reshape((b * r,) + v.shape[2:]) for k, v in rows.items()}
        per_row = jax.tree_util.tree_map(lambda x: jnp.repeat(x, r, axis=0), pred)
        return sft_loss(per_row, inputs.params, self.model_config, flat, self.remat)


class MultiTaskLoss:
    """``lambda_weight · weight_loss(pred, teacher) + lambda_delta · delta_loss(pred, teacher_delta)
    + lambda_sft · sft_loss(pred, sft_rows)``.

    Called as ``loss(pred, teacher=None, teacher_delta=None, delta_inputs=None, sft_rows=None) -> (total,
    {"loss_weight", "loss_delta", "loss_sft"})``, each term unweighted; ``delta_inputs`` (the base model's arrays)
    goes to the delta and SFT losses (their pure forms, inside a jitted step). ``weight_loss`` defaults to
    `DeltaWLoss`; it is evaluated whenever a teacher is given (cheap, and worth logging), while the delta and SFT
    terms run no forward pass when their weight is 0. `active_terms` are the terms worth logging. `from_config`
    builds the training loss of a `TrainingConfig`.
    """

    def __init__(self, lambda_weight: float = 1.0, lambda_delta: float = 0.0, weight_loss=None, delta_loss=None,
                 lambda_sft: float = 0.0, sft_loss=None):
        if min(lambda_weight, lambda_delta, lambda_sft) < 0:
            raise ValueError(f"MultiTaskLoss: weights must be >= 0, got lambda_weight={lambda_weight}, "
                             f"lambda_delta={lambda_delta}, lambda_sft={lambda_sft}")
        if lambda_weight == 0 and lambda_delta == 0 and lambda_sft == 0:
            raise ValueError("MultiTaskLoss: lambda_weight, lambda_delta and lambda_sft are all 0: nothing to train")
        if lambda_delta > 0 and delta_loss is None:
            raise ValueError(f"MultiTaskLoss: lambda_delta={lambda_delta} needs a delta_loss (a DeltaLoss on the "
                             f"base model and probes)")
        if lambda_sft > 0 and sft_loss is None:
            raise ValueError(f"MultiTaskLoss: lambda_sft={lambda_sft} needs an sft_loss (an SFTLoss)")
        self.lambda_weight, self.lambda_delta, self.lambda_sft = (float(lambda_weight), float(lambda_delta),
                                                                  float(lambda_sft))
        self.weight_loss = weight_loss if weight_loss is not None else DeltaWLoss()
        self.delta_loss, self.sft_loss = delta_loss, sft_loss

    @classmethod
    def from_config(cls, config, model_config=None) -> "MultiTaskLoss":
        """The loss a `TrainingConfig` trains with: its ``weight_loss`` (`DeltaWLoss` at its normalisation, or
        `WeightLoss` on the raw factors), a pure `DeltaLoss` when ``lambda_delta > 0`` and an `SFTLoss` when
        ``lambda_sft > 0`` (both on ``model_config``, called with ``delta_inputs``)."""
        if (config.lambda_delta > 0 or config.lambda_sft > 0) and model_config is None:
            raise ValueError("TrainingConfig.lambda_delta or lambda_sft > 0: the loss needs the base model's config")
        delta_loss = (DeltaLoss(model_config=model_config, delta_batch_probes=config.delta_batch_probes)
                      if config.lambda_delta > 0 else None)
        weight_loss = (WeightLoss() if config.weight_loss == "factors" else
                       DeltaWLoss(config.lora_alpha, config.lora_rank, normalize=config.loss_normalize))
        return cls(config.lambda_weight, config.lambda_delta, weight_loss, delta_loss,
                   config.lambda_sft, SFTLoss(model_config) if config.lambda_sft > 0 else None)

    @property
    def active_terms(self) -> tuple[str, ...]:
        return (("loss_weight",) + (("loss_delta",) if self.lambda_delta > 0 else ())
                + (("loss_sft",) if self.lambda_sft > 0 else ()))

    def __call__(self, pred: LoRA, teacher: LoRA | None = None, teacher_delta=None,
                 delta_inputs: DeltaInputs | None = None, sft_rows: dict | None = None):
        if self.lambda_weight > 0 and teacher is None:
            raise ValueError(f"MultiTaskLoss: lambda_weight={self.lambda_weight} needs the teacher LoRA")
        if self.lambda_delta > 0 and teacher_delta is None:
            raise ValueError(f"MultiTaskLoss: lambda_delta={self.lambda_delta} needs the teacher delta")
        if self.lambda_sft > 0 and (sft_rows is None or delta_inputs is None):
            raise ValueError(f"MultiTaskLoss: lambda_sft={self.lambda_sft} needs the SFT rows and the base model's "
                             f"arrays (delta_inputs)")
        zero = jnp.zeros((), jnp.float32)
        loss_weight = self.weight_loss(pred, teacher) if teacher is not None else zero
        loss_delta = self.delta_loss(pred, teacher_delta, delta_inputs) if self.lambda_delta > 0 else zero
        loss_sft = self.sft_loss(pred, sft_rows, delta_inputs) if self.lambda_sft > 0 else zero
        total = self.lambda_weight * loss_weight + self.lambda_delta * loss_delta + self.lambda_sft * loss_sft
        return total, {"loss_weight": loss_weight, "loss_delta": loss_delta, "loss_sft": loss_sft}
