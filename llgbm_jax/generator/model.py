"""The generator (hypernetwork): a pooled prompt embedding → a full `LoRA` for every layer and module.

Text-to-LoRA's shape: ``standardised condition ⊕ learned layer embedding ⊕ learned module embedding →
shared MLP trunk → one (A, B) head pair per module type``, evaluated for all (layer, module) pairs at
once. Every layer and module gets its own factors. The B heads start at zero, so an untrained
generator returns ΔW = 0 and leaves the base model unchanged; the A heads start so that A's entries
have PEFT's scale (std 1/sqrt(3·in), as U(±1/sqrt(in))).

Each head's output is multiplied by a fixed per-module scale: A's is PEFT's init std, B's is fitted on
the teachers (`fit_output_scale`: the B size that gives the teachers' ΔW RMS with A at that std), so the
heads learn factors in units of the teachers' own size. Without it one Adam step at lr 1e-3 moves B by
~100x a 24-step teacher's B, and training diverges (measured on the cpu zoo). The layer and module
embeddings start with std `EMBEDDING_INIT_STD`: a teacher's A is its own random initialisation, so the
targets of two layers of one task are unrelated, yet with unit-std embeddings the trunk features of the
layers of one task had cosine 0.93 at initialisation. On the cpu zoo (ΔW cosine of each task's
generated adapter to its final teacher): std 1, 150 steps 0.15-0.50; std 3, 150 steps 0.18-0.62; std 8,
300 steps 0.35-0.77, 1000 steps 0.80-0.94.

In a jitted training step use the pure-function form::

    graphdef, params, rest = nnx.split(gen, nnx.Param, ...)   # trainable / the rest (fitted statistics)
    apply = generator_fn(graphdef, rest)                       # (params, cond [N, D]) -> LoRA, batch (N,)
    loss, grads = jax.value_and_grad(lambda p: loss_fn(apply(p, cond), teacher))(params)

With a *base adapter* (`LoRAGenerator.set_base_adapter`, ``TrainingConfig.base_adapter``; for example a multi-task
LoRA of the training tasks) every generated adapter is that adapter plus the generated correction, their factors
concatenated along the rank axis (rank r + the base's, scaling folded into B). The B heads start at zero, so an
untrained generator returns the base adapter; the output scale is fitted on the teachers' ΔW minus the base's.

A trained generator is saved for use with `save_generator` (config JSON + one safetensors file),
loaded with `load_generator`, and turned into an adapter for a new task with `generate_lora`.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llgbm_jax.base.config import ModelConfig
from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.lora.adapter import LoRA, LoRAConfig
from llgbm_jax.utils.io import atomic_dir

CONFIG_FILE = "generator_config.json"
WEIGHTS_FILE = "generator.safetensors"
FORMAT_VERSION = 2  # 2: head output scales (a_scale, b_scale)
DEFAULT_COND_DIM = 384  # all-MiniLM-L6-v2
EMBEDDING_INIT_STD = 8.0  # layer and module embeddings (see the module docstring)


class FittedStat(nnx.Variable):
    """A buffer fitted on the training data, not trained (condition normaliser, head output scales): not an
    `nnx.Param`, so optimizers skip it."""


class LoRAGenerator(nnx.Module):
    """``cond [N, cond_dim]`` (or ``[cond_dim]``) → `LoRA` with batch shape ``(N,)`` (or ``()``), float32."""

    def __init__(self, model_config: ModelConfig, lora_config: LoRAConfig, *, cond_dim: int = DEFAULT_COND_DIM,
                 hidden: int = 512, trunk_layers: int = 2, embedding_dim: int = 64, rngs: nnx.Rngs,
                 text_encoder: nnx.Module | None = None):
        if not lora_config.is_uniform:
            raise ValueError("LoRAGenerator: per-layer ranks/alphas are not supported; use a uniform LoRAConfig")
        self.model_config, self.lora_config, self.cond_dim = model_config, lora_config, cond_dim
        self._training_config: str | None = None  # TrainingConfig as JSON: hashable static graph data
        self.text_encoder = nnx.data(text_encoder)  # a submodule (trained jointly) or None, assignable later
        L, M, r = model_config.num_layers, len(lora_config.target_modules), lora_config.rank

        self.cond_mean = FittedStat(jnp.zeros(cond_dim, jnp.float32))
        self.cond_scale = FittedStat(jnp.ones(cond_dim, jnp.float32))
        self.a_scale = FittedStat(jnp.asarray([1.0 / math.sqrt(3 * model_config.module_shapes[m][1])
                                               for m in lora_config.target_modules], jnp.float32))  # PEFT's std
        self.b_scale = FittedStat(jnp.ones(M, jnp.float32))  # until fit_output_scale
        self.base_A = self.base_B = nnx.data(None)  # set_base_adapter: per module [L, r_base, in], [L, out, r_base]
        self.cond_proj = nnx.Linear(cond_dim, hidden, rngs=rngs)
        emb = lambda n: EMBEDDING_INIT_STD * jax.random.normal(rngs.params(), (n, embedding_dim), jnp.float32)
        self.layer_emb, self.module_emb = nnx.Param(emb(L)), nnx.Param(emb(M))
        widths = [hidden + 2 * embedding_dim] + [hidden] * (trunk_layers - 1)
        self.trunk = nnx.List([nnx.Linear(w, hidden, rngs=rngs) for w in widths])
        self.trunk_norms = nnx.List([nnx.LayerNorm(hidden, rngs=rngs) for _ in widths])
        self.out_norm = nnx.LayerNorm(hidden, rngs=rngs)  # z has unit variance per row: A's init scale is exact

        a_heads, b_heads = {}, {}
        for m in lora_config.target_modules:
            out, inp = model_config.module_shapes[m]
            a_init = nnx.initializers.normal(1.0 / math.sqrt(hidden))  # with a_scale: std(A) = 1/sqrt(3·in)
            a_heads[m] = nnx.Linear(hidden, r * inp, kernel_init=a_init, rngs=rngs)
            b_heads[m] = nnx.Linear(hidden, out * r, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)
        self.a_heads, self.b_heads = nnx.Dict(a_heads), nnx.Dict(b_heads)

    # --- the TrainingConfig travels with the generator (saved by save_generator) ---------------------------
    @property
    def training_config(self) -> TrainingConfig | None:
        return None if self._training_config is None else TrainingConfig.from_dict(json.loads(self._training_config))

    @training_config.setter
    def training_config(self, config: TrainingConfig | None):
        self._training_config = None if config is None else json.dumps(config.to_dict(), sort_keys=True)

    # --- conditions ----------------------------------------------------------------------------------------
    def fit_condition_normalizer(self, conditions, floor: float = 0.1) -> None:
        """Set the normaliser to the mean and per-feature std of ``conditions [N, cond_dim]``; each std is
        floored at ``floor`` × the mean std (features that barely vary are not blown up); all stds 0 → 1."""
        c = np.asarray(conditions, np.float64)
        if c.ndim != 2 or c.shape[1] != self.cond_dim:
            raise ValueError(f"fit_condition_normalizer: conditions have shape {c.shape}, "
                             f"expected [N, {self.cond_dim}]")
        std = c.std(0)
        scale = np.maximum(std, floor * std.mean()) if std.mean() > 0 else np.ones_like(std)
        self.cond_mean.set_value(jnp.asarray(c.mean(0), jnp.float32))
        self.cond_scale.set_value(jnp.asarray(scale, jnp.float32))

    def fit_output_scale(self, teachers: LoRA) -> None:
        """Set each module's B scale from teachers (a stacked `LoRA`, any rank and scaling): the RMS of their
        ΔW entries over (this generator's scaling · sqrt(rank) · A's scale), i.e. the size B's entries need
        for that ΔW RMS with independent factors. A module whose teachers have ΔW = 0 keeps its scale; teachers
        with non-finite factors are skipped."""
        scales = []
        for j, m in enumerate(self.lora_config.target_modules):
            if m not in teachers.A:
                raise ValueError(f"fit_output_scale: the teachers have no {m!r} module")
            a = np.asarray(teachers.A[m], np.float64)  # [..., L, r, in]
            b = np.asarray(teachers.B[m], np.float64) * teachers.scales(m)[:, None, :]  # [..., L, out, r]
            if self.base_A is not None:  # the correction's size: each teacher's ΔW minus the base adapter's
                a_b, b_b = (np.asarray(x[m][...], np.float64) for x in (self.base_A, self.base_B))
                a = np.concatenate([a, np.broadcast_to(a_b, a.shape[:-3] + a_b.shape)], -2)
                b = np.concatenate([b, -np.broadcast_to(b_b, b.shape[:-3] + b_b.shape)], -1)
            sq = np.einsum("...ij,...ik,...jl,...kl->...", b, b, a, a, optimize=True)  # ‖B_s A‖² via r × r Grams
            sq = sq[np.isfinite(sq)]  # a non-finite teacher is left to the training loop to report
            rms = math.sqrt(sq.sum() / (sq.size * b.shape[-2] * a.shape[-1])) if sq.size else 0.0
            denom = self.lora_config.scaling * math.sqrt(self.lora_config.rank) * float(self.a_scale[...][j])
            scales.append(rms / denom if rms > 0 else float(self.b_scale[...][j]))
        self.b_scale.set_value(jnp.asarray(scales, jnp.float32))

    def set_base_adapter(self, lora: LoRA | None) -> None:
        """Add ``lora`` (one adapter, any rank and scaling, the generator's modules) to every generated adapter;
        None removes it. Call before `fit_output_scale`, which then fits the correction's size."""
        if lora is None:
            self.base_A = self.base_B = nnx.data(None)
            return
        from llgbm_jax.lora.ops import fold_scaling

        if set(lora.modules) != set(self.lora_config.target_modules) or lora.batch_shape:
            raise ValueError(f"set_base_adapter: expected one adapter on the modules "
                             f"{list(self.lora_config.target_modules)}, got batch shape {lora.batch_shape} and "
                             f"modules {list(lora.modules)}")
        folded = fold_scaling(lora)
        for m in self.lora_config.target_modules:
            out, inp = self.model_config.module_shapes[m]
            want = (self.model_config.num_layers, folded.config.rank, inp)
            if folded.A[m].shape != want or folded.B[m].shape != (want[0], out, want[1]):
                raise ValueError(f"set_base_adapter: {m} factors {folded.A[m].shape} / {folded.B[m].shape} do not "
                                 f"fit this base model's [layers, rank, in] = {want} / [layers, out, rank]")
        stat = lambda x: nnx.data(nnx.Dict({m: FittedStat(jnp.asarray(x[m], jnp.float32)) for m in folded.modules}))
        self.base_A, self.base_B = stat(folded.A), stat(folded.B)

    def condition(self, embeddings: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Pool prompt embeddings ``[N, P, cond_dim]`` over the real prompts (``mask [N, P]``) → ``[N, cond_dim]``."""
        if mask is None:
            return embeddings.mean(-2)
        m = jnp.asarray(mask, embeddings.dtype)[..., None]
        return (embeddings * m).sum(-2) / jnp.maximum(m.sum(-2), 1.0)

    def condition_from_tokens(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Encode prompts ``ids/mask [N, P, S]`` with the attached text encoder and pool → ``[N, cond_dim]``;
        a prompt with no tokens is padding."""
        if self.text_encoder is None:
            raise ValueError("this generator has no text encoder (freeze_text_encoder=True): pass precomputed "
                             "prompt embeddings to condition()")
        n, p, s = ids.shape
        emb = self.text_encoder(ids.reshape(n * p, s), mask.reshape(n * p, s)).reshape(n, p, -1)
        return self.condition(emb, mask.any(-1))

    # --- the forward pass ----------------------------------------------------------------------------------
    def trunk_features(self, cond: jax.Array) -> jax.Array:
        """``cond [N, cond_dim]`` → ``z [N, L, M, hidden]`` for all (layer, module) pairs at once."""
        c = self.cond_proj((cond - self.cond_mean[...]) / self.cond_scale[...])
        (n, _), (L, E), M = c.shape, self.layer_emb.shape, self.module_emb.shape[0]
        x = jnp.concatenate([jnp.broadcast_to(c[:, None, None, :], (n, L, M, c.shape[-1])),
                             jnp.broadcast_to(self.layer_emb[...][None, :, None, :], (n, L, M, E)),
                             jnp.broadcast_to(self.module_emb[...][None, None, :, :], (n, L, M, E))], -1)
        for i, (lin, norm) in enumerate(zip(self.trunk, self.trunk_norms)):
            y = jax.nn.silu(norm(lin(x)))
            x = y if i == 0 else x + y
        return self.out_norm(x)

    def __call__(self, cond: jax.Array) -> LoRA:
        cond = jnp.asarray(cond, jnp.float32)
        if cond.shape[-1] != self.cond_dim or cond.ndim not in (1, 2):
            raise ValueError(f"LoRAGenerator: condition shape {cond.shape}, expected [N, {self.cond_dim}] or "
                             f"[{self.cond_dim}]")
        single = cond.ndim == 1
        z = self.trunk_features(cond[None] if single else cond)
        n, L, r = z.shape[0], self.model_config.num_layers, self.lora_config.rank
        A, B = {}, {}
        a_scale, b_scale = self.a_scale[...], self.b_scale[...]
        config = self.lora_config
        if self.base_A is not None:  # base adapter ⊕ correction: ranks add up, scaling folded into B
            rank = r + next(iter(self.base_A.values()))[...].shape[-2]
            config = LoRAConfig(rank, float(rank), self.lora_config.target_modules)
        for j, m in enumerate(self.lora_config.target_modules):  # ≤ 7 module types; all layers at once
            out, inp = self.model_config.module_shapes[m]
            zm = z[:, :, j]
            A[m] = (a_scale[j] * self.a_heads[m](zm)).reshape(n, L, r, inp)
            B[m] = (b_scale[j] * self.b_heads[m](zm)).reshape(n, L, out, r)
            if self.base_A is not None:
                a_b, b_b = self.base_A[m][...], self.base_B[m][...]
                A[m] = jnp.concatenate([A[m], jnp.broadcast_to(a_b, (n,) + a_b.shape)], -2)
                B[m] = jnp.concatenate([self.lora_config.scaling * B[m], jnp.broadcast_to(b_b, (n,) + b_b.shape)], -1)
            if single:
                A[m], B[m] = A[m][0], B[m][0]
        return LoRA(A=A, B=B, config=config)

    def num_params(self) -> int:
        """Trainable parameters (the attached text encoder's included)."""
        return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(self, nnx.Param)))


# --- pure-function use in a jitted step ----------------------------------------------------------------------

def generator_fn(graphdef, rest) -> Callable[[nnx.State, jax.Array], LoRA]:
    """``apply(params, cond) -> LoRA``, a pure function to call inside ``jax.jit`` / ``jax.grad``."""
    return lambda params, cond: nnx.merge(graphdef, params, rest)(cond)


# --- construction --------------------------------------------------------------------------------------------

def _encoder_module(text_encoder):
    """A `MiniLMEncoder` from either the module itself or a loaded `TextEncoder` (its ``.model``)."""
    return getattr(text_encoder, "model", text_encoder)


def create_generator(config: TrainingConfig, seed: int = 0, text_encoder=None, *,
                     model_config: ModelConfig | None = None) -> LoRAGenerator:
    """The generator of ``config``: shapes from ``model_config`` (else the base model ``config.model_name``),
    rank/alpha/modules and trunk size from ``config``. The text encoder (a `MiniLMEncoder`, or a `TextEncoder`)
    becomes a trainable submodule only when ``config.freeze_text_encoder`` is False (a fresh copy is loaded
    from ``config.text_encoder_name`` if none is given); frozen, conditions are precomputed embeddings.
    Prints the trainable parameter count."""
    if model_config is None:
        from llgbm_jax.base.model import load_base_model

        model_config = load_base_model(config.model_name, dtype=config.dtype).config
    if text_encoder is None and not config.freeze_text_encoder:
        from llgbm_jax.conditions.text_encoder import load_text_encoder

        text_encoder = load_text_encoder(config.text_encoder_name)  # not the memoised one: it will be trained
    if text_encoder is not None:
        cond_dim = _encoder_module(text_encoder).config.dim
    elif config.text_encoder_name is not None:
        cond_dim = _text_encoder(config.text_encoder_name).dim
    else:
        cond_dim = DEFAULT_COND_DIM
    gen = _build(config, model_config, cond_dim, seed)
    if config.base_adapter is not None:
        from llgbm_jax.lora.peft import load_peft_adapter

        gen.set_base_adapter(load_peft_adapter(config.base_adapter, model_config))
    if not config.freeze_text_encoder:
        gen.text_encoder = _encoder_module(text_encoder)
    n = gen.num_params()
    print(f"generator: {n / 1e6:.1f}M trainable parameters ({n:,})")
    return gen


def _build(config: TrainingConfig, model_config: ModelConfig, cond_dim: int, seed: int,
           abstract: bool = False) -> LoRAGenerator:
    """The generator without a text encoder, initialised in one compiled program (eager initialisation of
    ~42M parameters takes twice as long), or with shapes only (``abstract``: to be filled from a file)."""
    make = lambda: LoRAGenerator(model_config, LoRAConfig(config.lora_rank, config.lora_alpha, config.target_modules),
                                 cond_dim=cond_dim, hidden=config.generator_hidden,
                                 trunk_layers=config.generator_layers,
                                 embedding_dim=config.embedding_dim, rngs=nnx.Rngs(seed))
    gen = nnx.eval_shape(make) if abstract else nnx.jit(make)()
    gen.training_config = config
    return gen


@functools.lru_cache(maxsize=4)
def _text_encoder(name: str | None):
    """A loaded `TextEncoder` per name (memoised: loading takes seconds)."""
    from llgbm_jax.conditions.text_encoder import load_text_encoder

    return load_text_encoder(name)


# --- save for use / load --------------------------------------------------------------------------------------

def _flat_state(generator: LoRAGenerator) -> dict[str, nnx.Variable]:
    return {"/".join(map(str, path)): var for path, var in nnx.to_flat_state(nnx.state(generator))}


def save_generator(generator: LoRAGenerator, path: str, config: TrainingConfig | None = None,
                   extra: dict | None = None) -> str:
    """Write a folder (atomically): ``generator_config.json`` (TrainingConfig, model config, cond_dim, format
    version, ``extra``) and ``generator.safetensors`` (parameters and normaliser, '/'-joined state paths)."""
    from safetensors.numpy import save_file

    config = config or generator.training_config
    if config is None:
        raise ValueError("save_generator: no TrainingConfig given and none is attached to the generator")
    meta = {"format_version": FORMAT_VERSION, "training_config": config.to_dict(),
            "model_config": generator.model_config.to_dict(), "cond_dim": generator.cond_dim,
            "extra": extra or {}}
    tensors = {k: np.asarray(v[...]) for k, v in _flat_state(generator).items()}
    with atomic_dir(path) as tmp:
        save_file(tensors, os.path.join(tmp, WEIGHTS_FILE))
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(meta, f, indent=2)
    return path


def load_generator(path: str, text_encoder=None) -> tuple[LoRAGenerator, TrainingConfig]:
    """Rebuild a generator saved by `save_generator` (no base model needed) and fill its state; a missing,
    unexpected or misshaped tensor is an error naming the file and key."""
    from safetensors import safe_open

    cfg_file, weights = os.path.join(path, CONFIG_FILE), os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f"{path}: not a saved generator (missing {CONFIG_FILE})")
    with open(cfg_file) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{cfg_file}: unsupported format_version {meta.get('format_version')!r} "
                         f"(this code reads {FORMAT_VERSION})")
    missing = [k for k in ("training_config", "model_config", "cond_dim") if k not in meta]
    if missing:
        raise ValueError(f"{cfg_file}: missing key(s) {missing}")
    config = TrainingConfig.from_dict(meta["training_config"], source=cfg_file)
    gen = _build(config, ModelConfig.from_dict(meta["model_config"]), meta["cond_dim"], 0, abstract=True)
    if not config.freeze_text_encoder:  # its structure; the weights come from the file like the rest
        from llgbm_jax.conditions.text_encoder import load_text_encoder

        gen.text_encoder = _encoder_module(text_encoder if text_encoder is not None
                                           else load_text_encoder(config.text_encoder_name))
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"missing weights file: {weights}")
    try:
        with safe_open(weights, framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{weights}: unreadable safetensors file ({type(e).__name__}: {e})") from None
    base_A = {k.removeprefix("base_A/"): t for k, t in tensors.items() if k.startswith("base_A/")}
    if base_A:  # the base adapter travels in the file (scaling folded into B), not as a path
        missing = [f"base_B/{m}" for m in base_A if f"base_B/{m}" not in tensors]
        if missing:
            raise ValueError(f"{weights}: missing tensor(s) {missing}")
        rank = next(iter(base_A.values())).shape[-2]
        gen.set_base_adapter(LoRA(A=base_A, B={m: tensors[f"base_B/{m}"] for m in base_A},
                                  config=LoRAConfig(rank, float(rank), tuple(base_A))))
    flat = _flat_state(gen)
    unexpected = sorted(set(tensors) - set(flat))
    if unexpected:
        raise ValueError(f"{weights}: unexpected tensor(s) {unexpected} for this generator config")
    for key, var in flat.items():
        if key not in tensors:
            raise ValueError(f"{weights}: missing tensor {key!r}")
        t, want = tensors[key], var.get_value()
        if t.shape != want.shape or t.dtype != want.dtype:
            raise ValueError(f"{weights}: tensor {key!r} is {t.dtype}{list(t.shape)}, expected "
                             f"{want.dtype}{list(want.shape)} (from {CONFIG_FILE})")
        var.set_value(jnp.asarray(t))
    return gen, config


def generate_lora(generator: LoRAGenerator, prompts: Sequence[str], text_encoder=None) -> LoRA:
    """One adapter (batch shape ``()``) from a few prompts of a task: embed (``text_encoder``, a loaded
    `TextEncoder`; default the generator's ``text_encoder_name``, loaded once), pool, generate."""
    if isinstance(prompts, str) or len(prompts) == 0:
        raise ValueError("generate_lora: pass a non-empty list of prompt strings")
    if text_encoder is None:
        config = generator.training_config
        text_encoder = _text_encoder(config.text_encoder_name if config else None)
    if generator.text_encoder is not None:  # trained jointly: its own weights, the loaded tokenizer
        return _generate_from_tokens(generator, *map(jnp.asarray, text_encoder.tokenize(prompts)))
    return _generate_from_embeddings(generator, jnp.asarray(text_encoder.encode(prompts)))


@nnx.jit
def _generate_from_embeddings(generator: LoRAGenerator, embeddings: jax.Array) -> LoRA:
    return generator(generator.condition(embeddings))


@nnx.jit
def _generate_from_tokens(generator: LoRAGenerator, ids: jax.Array, mask: jax.Array) -> LoRA:
    return generator(generator.condition_from_tokens(ids[None], mask[None])[0])


def write_adapter(generator_dir: str, prompts: Sequence[str], out: str, *, model: str | None = None,
                  force: bool = False, text_encoder=None) -> tuple[str, str]:
    """The adapter the generator saved in ``generator_dir`` makes from ``prompts`` (a task description or a few
    example prompts), written as a PEFT folder ``out`` that records the generator's base model. ``model``, when
    given, must name that base model; an existing ``out`` is replaced only with ``force``. Returns ``(out, the
    recorded base model)``."""
    from llgbm_jax.base.model import hub_name, same_model
    from llgbm_jax.lora.peft import save_peft_adapter

    if not os.path.isdir(generator_dir):
        raise FileNotFoundError(f"{generator_dir}: no such generator folder (a main-job run writes one to "
                                f"<output-dir>/generator)")
    if os.path.exists(out) and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    generator, config = load_generator(generator_dir, text_encoder)
    if model is not None and not same_model(model, config.model_name):
        raise ValueError(f"{generator_dir}: this generator writes adapters for base model {config.model_name!r}, "
                         f"not {model!r}")
    base = hub_name(config.model_name)
    save_peft_adapter(generate_lora(generator, prompts, text_encoder), out, base_model_name_or_path=base,
                      model_config=generator.model_config)
    return out, base
