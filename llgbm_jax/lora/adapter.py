"""`LoRA`: the one adapter representation shared by the decoder, the losses and the exporters.

Factors are stacked over layers in PEFT's orientation: ``A[m]`` is ``[..., L, r, in]`` and ``B[m]``
is ``[..., L, out, r]``; a batch of adapters adds leading axes. ΔW for module m, layer l is
``scaling * B[l] @ A[l]``.

Ranks and alphas may differ per module and layer (PEFT's ``rank_pattern`` / ``alpha_pattern``): the
arrays are then zero-padded to the largest rank, and `LoRAConfig.scales` gives, for every layer, one
factor per rank slot (the layer's scaling, or 0 for padding), so padding never changes the output.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from llgbm_jax.utils.io import atomic_file

ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _per_layer(name: str, value, modules, cast) -> tuple:
    """Normalise ``{module: per-layer values}`` (dict or pairs) to sorted hashable pairs."""
    items = dict(value.items() if isinstance(value, Mapping) else value)
    bad = [m for m in items if m not in modules]
    if bad:
        raise ValueError(f"LoRAConfig.{name}: module(s) {bad} are not in target_modules {tuple(modules)}")
    return tuple((m, tuple(cast(v) for v in items[m])) for m in ALL_MODULES if m in items)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Static metadata of an adapter (hashable; lives in the pytree's treedef, not its leaves).

    ``layer_ranks`` / ``layer_alphas`` map a module to one rank / alpha per layer where it differs
    from ``rank`` / ``alpha`` (resolved PEFT ``rank_pattern`` / ``alpha_pattern``); entries equal to
    the defaults are dropped, so equal adapters have equal configs.
    """

    rank: int
    alpha: float
    target_modules: tuple[str, ...] = ALL_MODULES
    use_rslora: bool = False
    layer_ranks: tuple[tuple[str, tuple[int, ...]], ...] = ()
    layer_alphas: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def __post_init__(self):
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else tuple(self.target_modules)
        unknown = [m for m in targets if m not in ALL_MODULES]
        if unknown:
            raise ValueError(f"unknown LoRA target module(s) {unknown}; known: {ALL_MODULES}")
        if not targets:
            raise ValueError("LoRAConfig.target_modules is empty")
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")
        targets = tuple(m for m in ALL_MODULES if m in targets)
        ranks = _per_layer("layer_ranks", self.layer_ranks, targets, int)
        alphas = _per_layer("layer_alphas", self.layer_alphas, targets, float)
        lengths = {len(v) for _, v in ranks + alphas}
        if len(lengths) > 1:
            raise ValueError(f"LoRAConfig: layer_ranks/layer_alphas disagree on the number of layers: {lengths}")
        if any(r <= 0 for _, v in ranks for r in v):
            raise ValueError(f"LoRAConfig.layer_ranks must be positive, got {dict(ranks)}")
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("target_modules", targets)
        set_("layer_ranks", tuple((m, v) for m, v in ranks if any(r != self.rank for r in v)))
        set_("layer_alphas", tuple((m, v) for m, v in alphas if any(a != self.alpha for a in v)))

    @property
    def is_uniform(self) -> bool:
        """True when every module and layer has rank ``rank`` and alpha ``alpha``."""
        return not self.layer_ranks and not self.layer_alphas

    @property
    def max_rank(self) -> int:
        """Size of the rank axis of the stacked arrays."""
        return max([self.rank] + [r for _, v in self.layer_ranks for r in v])

    def ranks(self, module: str, num_layers: int) -> tuple[int, ...]:
        return dict(self.layer_ranks).get(module, (self.rank,) * num_layers)

    def alphas(self, module: str, num_layers: int) -> tuple[float, ...]:
        return dict(self.layer_alphas).get(module, (self.alpha,) * num_layers)

    def _scaling(self, alpha: float, rank: int) -> float:
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)

    @property
    def scaling(self) -> float:
        """``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA); only defined when `is_uniform`."""
        if not self.is_uniform:
            raise ValueError("this LoRA has per-layer ranks or alphas; use LoRAConfig.scales(module, num_layers)")
        return self._scaling(self.alpha, self.rank)

    def scales(self, module: str, num_layers: int) -> np.ndarray:
        """``[L, max_rank]`` float64: the layer's scaling in its first ``r_l`` slots, 0 in padding."""
        out = np.zeros((num_layers, self.max_rank))
        for l, (r, a) in enumerate(zip(self.ranks(module, num_layers), self.alphas(module, num_layers))):
            out[l, :r] = self._scaling(a, r)
        return out


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoRA:
    """A (batch of) LoRA adapter(s): ``A``/``B`` dicts keyed by module name, plus static config."""

    A: dict[str, jax.Array]
    B: dict[str, jax.Array]
    config: LoRAConfig = dataclasses.field(metadata=dict(static=True))

    @property
    def scaling(self) -> float:
        return self.config.scaling

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(m for m in ALL_MODULES if m in self.A)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading adapter axes (``()`` for a single adapter)."""
        a = self.A[self.modules[0]]
        return tuple(a.shape[:-3])

    @property
    def num_layers(self) -> int:
        return self.A[self.modules[0]].shape[-3]

    def scales(self, module: str) -> np.ndarray:
        """``[L, max_rank]`` per-slot scaling of ``module`` (see `LoRAConfig.scales`)."""
        return self.config.scales(module, self.num_layers)

    def num_params(self) -> int:
        """Parameters of one adapter at its true ranks (padding excluded)."""
        L = self.num_layers
        return sum(r * (self.A[m].shape[-1] + self.B[m].shape[-2])
                   for m in self.modules for r in self.config.ranks(m, L))


def delta_w(lora: LoRA, module: str, layer: int | None = None) -> jax.Array:
    """The effective update ``scaling * B @ A``: ``[..., out, in]`` for one layer, ``[..., L, out, in]``
    for ``layer=None``."""
    s = jnp.asarray(lora.scales(module), lora.B[module].dtype)
    a, b = lora.A[module], lora.B[module]
    if layer is None:
        return (b * s[:, None, :]) @ a
    return (b[..., layer, :, :] * s[layer]) @ a[..., layer, :, :]


def check_lora(lora: LoRA, model_config) -> None:
    """Raise ``ValueError`` naming the module and shape if ``lora`` does not fit ``model_config``."""
    c, L, r = lora.config, model_config.num_layers, lora.config.max_rank
    if set(lora.A) != set(c.target_modules) or set(lora.B) != set(c.target_modules):
        raise ValueError(f"LoRA modules A={sorted(lora.A)} B={sorted(lora.B)} differ from its config's "
                         f"target_modules {c.target_modules}")
    for m, v in c.layer_ranks + c.layer_alphas:
        if len(v) != L:
            raise ValueError(f"LoRA config gives {len(v)} per-layer values for {m}, the model has {L} layers")
    batch = None
    for m in c.target_modules:
        out, inp = model_config.module_shapes[m]
        a, b = lora.A[m].shape, lora.B[m].shape
        if len(a) < 3 or a[-3:] != (L, r, inp) or len(b) < 3 or b[-3:] != (L, out, r) or a[:-3] != b[:-3]:
            raise ValueError(f"LoRA {m}: A {tuple(a)} / B {tuple(b)} do not match [..., L={L}, r={r}, in={inp}] / "
                             f"[..., L={L}, out={out}, r={r}]")
        if batch is not None and a[:-3] != batch:
            raise ValueError(f"LoRA {m}: adapter batch shape {tuple(a[:-3])} differs from {batch}")
        batch = a[:-3]


def _shapes(model_config, config: LoRAConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    L, r = model_config.num_layers, config.max_rank
    shapes = model_config.module_shapes
    return {m: ((L, r, shapes[m][1]), (L, shapes[m][0], r)) for m in config.target_modules}


def zeros_lora(model_config, config: LoRAConfig, dtype=jnp.float32) -> LoRA:
    s = _shapes(model_config, config)
    return LoRA(
        A={m: jnp.zeros(a, dtype) for m, (a, _) in s.items()},
        B={m: jnp.zeros(b, dtype) for m, (_, b) in s.items()},
        config=config,
    )


def init_lora(key, model_config, config: LoRAConfig, *, random_b: bool = False, b_std: float = 0.02,
              dtype=jnp.float32) -> LoRA:
    """PEFT's initialisation: A Kaiming-uniform (a=sqrt(5), i.e. U(±1/sqrt(in))), B zero.

    ``random_b=True`` also draws B ~ N(0, b_std²) so that the adapter changes the model (for tests).
    Rank padding (per-layer ranks below ``max_rank``) is zero.
    """
    s = _shapes(model_config, config)
    keys = jax.random.split(key, 2 * len(s))
    A, B = {}, {}
    for i, (m, (a_shape, b_shape)) in enumerate(s.items()):
        ranks = np.asarray(config.ranks(m, model_config.num_layers))
        live = jnp.asarray(np.arange(config.max_rank)[None, :] < ranks[:, None], dtype)  # [L, r]
        bound = 1.0 / math.sqrt(a_shape[-1])
        A[m] = jax.random.uniform(keys[2 * i], a_shape, dtype, -bound, bound) * live[:, :, None]
        B[m] = ((b_std * jax.random.normal(keys[2 * i + 1], b_shape, dtype)) * live[:, None, :] if random_b
                else jnp.zeros(b_shape, dtype))
    return LoRA(A=A, B=B, config=config)


def stack_loras(loras: list[LoRA]) -> LoRA:
    """Stack adapters with the same config into a batch (new leading axis)."""
    configs = {l.config for l in loras}
    if len(configs) != 1:
        raise ValueError(f"cannot stack adapters with different configs: {configs}")
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *loras)


def unstack_loras(lora: LoRA) -> list[LoRA]:
    """Inverse of `stack_loras` for one leading adapter axis."""
    n = lora.batch_shape[0]
    return [jax.tree_util.tree_map(lambda x, i=i: x[i], lora) for i in range(n)]


def layer_slices(lora: LoRA | None) -> Mapping | None:
    """Per-layer view for `lax.scan`: ``{module: (A, B, scales)}`` with the layer axis moved to the front;
    ``scales`` is the constant ``[L, max_rank]`` of `LoRA.scales`."""
    if lora is None:
        return None
    nb = len(lora.batch_shape)
    move = lambda x: jnp.moveaxis(x, nb, 0)
    return {m: (move(lora.A[m]), move(lora.B[m]), jnp.asarray(lora.scales(m), lora.A[m].dtype))
            for m in lora.modules}


# --- llgbm_jax's own LoRA file: one safetensors file, stacked arrays, config in the metadata ----------

def save_lora(lora: LoRA, path: str) -> str:
    """Write ``lora`` (any batch shape) to one ``.safetensors`` file atomically; see `load_lora`."""
    from safetensors.numpy import save_file

    tensors = {f"{f}.{m}": np.asarray(getattr(lora, f)[m]) for f in "AB" for m in lora.modules}
    meta = {"llgbm_jax_lora": json.dumps(dataclasses.asdict(lora.config))}
    with atomic_file(path, ".safetensors") as tmp:
        save_file(tensors, tmp, metadata=meta)
    return path


def load_lora(path: str) -> LoRA:
    """Read a file written by `save_lora`."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: unreadable safetensors file ({type(e).__name__}: {e})") from None
    if "llgbm_jax_lora" not in meta:
        raise ValueError(f"{path}: not an llgbm_jax LoRA file (no 'llgbm_jax_lora' metadata); "
                         f"for a PEFT adapter folder use load_peft_adapter")
    config = LoRAConfig(**json.loads(meta["llgbm_jax_lora"]))
    want = {f"{f}.{m}" for f in "AB" for m in config.target_modules}
    if set(tensors) != want:
        raise ValueError(f"{path}: tensors {sorted(tensors)} do not match the config's modules {sorted(want)}")
    return LoRA(A={m: jnp.asarray(tensors[f"A.{m}"]) for m in config.target_modules},
                B={m: jnp.asarray(tensors[f"B.{m}"]) for m in config.target_modules}, config=config)
