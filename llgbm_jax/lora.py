"""`LoRA`: the one adapter representation shared by the decoder, the losses and the exporters.

Factors are stacked over layers in PEFT's orientation: ``A[m]`` is ``[..., L, r, in]`` and ``B[m]``
is ``[..., L, out, r]``; a batch of adapters adds leading axes. ΔW for module m, layer l is
``scaling * B[l] @ A[l]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Static metadata of an adapter (hashable; lives in the pytree's treedef, not its leaves)."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...] = ALL_MODULES
    use_rslora: bool = False

    def __post_init__(self):
        unknown = [m for m in self.target_modules if m not in ALL_MODULES]
        if unknown:
            raise ValueError(f"unknown LoRA target module(s) {unknown}; known: {ALL_MODULES}")
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


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

    def num_params(self) -> int:
        """Trainable parameters of one adapter."""
        n = 1
        for d in self.batch_shape:
            n *= d
        return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves((self.A, self.B))) // n


def delta_w(lora: LoRA, module: str, layer: int) -> jax.Array:
    """The effective update ``scaling * B[layer] @ A[layer]`` (``[..., out, in]``)."""
    a = lora.A[module][..., layer, :, :]
    b = lora.B[module][..., layer, :, :]
    return lora.scaling * (b @ a)


def _shapes(model_config, config: LoRAConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    L, r = model_config.num_layers, config.rank
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
    """
    s = _shapes(model_config, config)
    keys = jax.random.split(key, 2 * len(s))
    A, B = {}, {}
    for i, (m, (a_shape, b_shape)) in enumerate(s.items()):
        bound = 1.0 / math.sqrt(a_shape[-1])
        A[m] = jax.random.uniform(keys[2 * i], a_shape, dtype, -bound, bound)
        B[m] = (b_std * jax.random.normal(keys[2 * i + 1], b_shape, dtype)) if random_b else jnp.zeros(b_shape, dtype)
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
    """Per-layer view for `lax.scan`: ``{module: (A, B)}`` with the layer axis moved to the front."""
    if lora is None:
        return None
    nb = len(lora.batch_shape)
    move = lambda x: jnp.moveaxis(x, nb, 0)
    return {m: (move(lora.A[m]), move(lora.B[m])) for m in lora.modules}
