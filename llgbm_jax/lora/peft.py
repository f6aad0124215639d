"""PEFT interop: read and write LoRA adapter folders (``adapter_config.json`` + weights).

Keys are PEFT's as saved (adapter name omitted)::

    base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight   [r, in]
    base_model.model.model.layers.{l}.mlp.down_proj.lora_B.weight      [out, r]

`load_peft_adapter` reads ``r``, ``lora_alpha``, ``use_rslora``, ``rank_pattern`` / ``alpha_pattern``
(resolved per module and layer with PEFT's own matching rule), a subset of target modules and
``fan_in_fan_out`` (LoRA factors are stored as ``nn.Linear`` weights either way; PEFT itself ignores the
flag for the ``nn.Linear`` projections of Llama-family models). Anything else that would change what the
adapter computes (DoRA, biases, other PEFT types, ``modules_to_save``, partial layers, unknown keys)
raises ``ValueError`` naming the file and key: nothing is silently dropped.
"""

from __future__ import annotations

import json
import os
import re

import jax.numpy as jnp
import numpy as np

from llgbm_jax.lora.adapter import ALL_MODULES, LoRA, LoRAConfig, check_lora
from llgbm_jax.utils.io import atomic_dir

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(\w+)\.(\w+)\.lora_([AB])\.weight$")

# Config keys whose value does not change what a loaded adapter computes.
_IGNORED = {"base_model_name_or_path", "revision", "inference_mode", "lora_dropout", "peft_version",
            "auto_mapping", "megatron_core", "qalora_group_size", "ensure_weight_tying", "fan_in_fan_out",
            "loftq_config", "eva_config", "corda_config", "lora_ga_config"}
_HANDLED = {"peft_type", "task_type", "r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern",
            "target_modules", "bias", "init_lora_weights"}


def module_path(module: str, layer: int) -> str:
    """The module's name inside the transformers model, as PEFT matches patterns against it."""
    return f"model.layers.{layer}.{PARENT[module]}.{module}"


def peft_key(module: str, layer: int, factor: str) -> str:
    """The key PEFT saves for ``factor`` (``"A"`` or ``"B"``) of ``module`` in ``layer``."""
    return f"base_model.model.{module_path(module, layer)}.lora_{factor}.weight"


def _pattern_value(pattern: dict, path: str, default):
    """PEFT's `get_pattern_key`: the first key ``k`` with ``re.match(rf"(.*\\.)?({k})$", path)``."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _targeted(target, path: str) -> bool:
    """PEFT's target_modules rule: a string is a full-match regex, a list matches a name suffix."""
    if isinstance(target, str):
        return target == "all-linear" or re.fullmatch(target, path) is not None
    return any(path == t or path.endswith("." + t) for t in target)


def _read_config(folder: str) -> tuple[dict, str]:
    path = os.path.join(folder, CONFIG_NAME)
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: not a PEFT adapter folder (no {CONFIG_NAME})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return cfg, path


def _check_config(cfg: dict, src: str) -> None:
    """Refuse every setting that a stacked LoRA cannot represent exactly."""
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{src}: peft_type {cfg.get('peft_type')!r} is not supported (only 'LORA')")
    if cfg.get("task_type") not in (None, "CAUSAL_LM"):
        raise ValueError(f"{src}: task_type {cfg['task_type']!r} is not supported (only 'CAUSAL_LM')")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{src}: bias={cfg['bias']!r} is not supported (only 'none')")
    if cfg.get("init_lora_weights", True) not in (True, False, "gaussian"):
        raise ValueError(f"{src}: init_lora_weights={cfg['init_lora_weights']!r} changes the base weights; "
                         f"not supported")
    for key, value in cfg.items():
        if key not in _HANDLED and key not in _IGNORED and value not in (None, False, {}, [], ""):
            raise ValueError(f"{src}: {key}={value!r} is not supported by llgbm_jax's LoRA "
                             f"(only plain LoRA on {ALL_MODULES} of every layer)")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"{src}: r must be a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"{src}: lora_alpha must be a number, got {alpha!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(cfg.get(key) or {}, dict):
            raise ValueError(f"{src}: {key} must be an object, got {cfg[key]!r}")
    target = cfg.get("target_modules")
    if not target or not isinstance(target, (str, list)):
        raise ValueError(f"{src}: target_modules must be a non-empty list or a regex string, got {target!r}")


def _selected_modules(cfg: dict, num_layers: int, src: str) -> tuple[str, ...]:
    """Modules that target_modules selects; each must be selected in every layer or in none."""
    target = cfg["target_modules"]
    selected = []
    for m in ALL_MODULES:
        hits = [_targeted(target, module_path(m, l)) for l in range(num_layers)]
        if all(hits):
            selected.append(m)
        elif any(hits):
            raise ValueError(f"{src}: target_modules={target!r} selects {m} in layers "
                             f"{[l for l, h in enumerate(hits) if h]} only; a LoRA covers every layer")
    if isinstance(target, list):
        paths = [module_path(m, l) for m in ALL_MODULES for l in range(num_layers)]
        unknown = [t for t in target if not any(_targeted([t], p) for p in paths)]
        if unknown:
            raise ValueError(f"{src}: target_modules names unknown module(s) {unknown}; "
                             f"llgbm_jax supports {ALL_MODULES}")
    if not selected:
        raise ValueError(f"{src}: target_modules={target!r} selects none of {ALL_MODULES}")
    return tuple(selected)


def _read_tensors(folder: str) -> tuple[dict[str, np.ndarray], str]:
    st, bin_ = os.path.join(folder, SAFETENSORS_NAME), os.path.join(folder, BIN_NAME)
    if os.path.exists(st):
        from safetensors import safe_open

        try:
            with safe_open(st, framework="numpy") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, st
        except Exception as e:
            raise ValueError(f"{st}: unreadable safetensors file ({type(e).__name__}: {e})") from None
    if os.path.exists(bin_):
        try:
            import torch
        except ImportError:
            raise ImportError(f"{bin_}: reading adapter_model.bin needs torch; convert it to safetensors") from None
        try:
            state = torch.load(bin_, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{bin_}: unreadable torch file ({type(e).__name__}: {e})") from None
        out = {}
        for k, t in state.items():
            if t.dtype == torch.bfloat16:
                out[k] = t.float().numpy().astype(jnp.bfloat16)
            else:
                out[k] = t.numpy()
        return out, bin_
    raise FileNotFoundError(f"{folder}: no {SAFETENSORS_NAME} or {BIN_NAME}")


def load_peft_adapter(path: str, model_config=None, *, dtype=None) -> LoRA:
    """Read a PEFT LoRA folder into a `LoRA` (factors stacked over layers, zero-padded to the largest
    rank when ``rank_pattern`` gives different ranks).

    ``model_config`` (a `ModelConfig`), when given, also checks the layer count and every shape against
    the base model. ``dtype`` converts the factors (default: as stored).
    """
    cfg, src = _read_config(path)
    _check_config(cfg, src)
    tensors, wsrc = _read_tensors(path)
    found: dict[tuple[str, int, str], np.ndarray] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if not match or match.group(3) not in ALL_MODULES or PARENT[match.group(3)] != match.group(2):
            raise ValueError(f"{wsrc}: unexpected key {key!r}; llgbm_jax reads only keys "
                             f"'base_model.model.model.layers.<layer>.<self_attn|mlp>.<module>.lora_<A|B>.weight' "
                             f"for modules {ALL_MODULES}")
        layer, module, factor = int(match.group(1)), match.group(3), match.group(4)
        if model_config is not None and layer >= model_config.num_layers:
            raise ValueError(f"{wsrc}: key {key!r} is for layer {layer}; the model has "
                             f"{model_config.num_layers} layers")
        if value.ndim != 2:
            raise ValueError(f"{wsrc}: {key} has shape {tuple(value.shape)}; expected a 2-D LoRA factor")
        found[(module, layer, factor)] = value
    if not found:
        raise ValueError(f"{wsrc}: no LoRA weights")
    num_layers = model_config.num_layers if model_config is not None else 1 + max(l for _, l, _ in found)
    modules = _selected_modules(cfg, num_layers, src)
    for (m, l, f) in found:
        if m not in modules:
            raise ValueError(f"{wsrc}: key {peft_key(m, l, f)!r} is for {m}, which target_modules="
                             f"{cfg['target_modules']!r} in {src} does not select")

    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    ranks = {m: tuple(int(_pattern_value(rank_pattern, module_path(m, l), cfg["r"])) for l in range(num_layers))
             for m in modules}
    alphas = {m: tuple(_pattern_value(alpha_pattern, module_path(m, l), cfg["lora_alpha"])
                       for l in range(num_layers)) for m in modules}
    config = LoRAConfig(rank=cfg["r"], alpha=cfg["lora_alpha"], target_modules=modules,
                        use_rslora=bool(cfg.get("use_rslora", False)), layer_ranks=ranks, layer_alphas=alphas)
    r_max = config.max_rank
    A, B = {}, {}
    for m in modules:
        shapes = model_config.module_shapes[m] if model_config is not None else None
        a_list, b_list = [], []
        for l in range(num_layers):
            for f in "AB":
                if (m, l, f) not in found:
                    raise ValueError(f"{wsrc}: missing key {peft_key(m, l, f)!r}")
            a, b, r = found[(m, l, "A")], found[(m, l, "B")], ranks[m][l]
            if shapes is None:
                shapes = (b.shape[0], a.shape[1])
            for f, x, want in (("A", a, (r, shapes[1])), ("B", b, (shapes[0], r))):
                if tuple(x.shape) != want:
                    raise ValueError(f"{wsrc}: {peft_key(m, l, f)} has shape {tuple(x.shape)}, expected {want} "
                                     f"(rank {r} from {src}, (out, in) = {shapes})")
            a_list.append(np.pad(a, ((0, r_max - r), (0, 0))))
            b_list.append(np.pad(b, ((0, 0), (0, r_max - r))))
        A[m], B[m] = jnp.asarray(np.stack(a_list), dtype), jnp.asarray(np.stack(b_list), dtype)
    return LoRA(A=A, B=B, config=config)


def _number(x: float):
    return int(x) if float(x).is_integer() else float(x)


def _patterns(config: LoRAConfig, num_layers: int) -> tuple[dict, dict]:
    """Per-module / per-layer rank and alpha exceptions as PEFT ``rank_pattern`` / ``alpha_pattern``."""
    out = []
    for per_layer, default in ((config.layer_ranks, config.rank), (config.layer_alphas, config.alpha)):
        pattern = {}
        for m, values in per_layer:
            if len(set(values)) == 1:
                pattern[m] = _number(values[0])
            else:
                pattern.update({module_path(m, l): _number(v) for l, v in enumerate(values) if v != default})
        out.append(pattern)
    return out[0], out[1]


def save_peft_adapter(lora: LoRA, path: str, base_model_name_or_path: str | None = None, *,
                      model_config=None) -> str:
    """Write one adapter as a PEFT LoRA folder (atomically) that ``PeftModel.from_pretrained`` loads.

    Factors are written at their true ranks (padding dropped) in their own dtype. ``model_config``, when
    given, checks the shapes first. Returns ``path``.
    """
    from safetensors.numpy import save_file

    if lora.batch_shape != ():
        raise ValueError(f"save_peft_adapter writes one adapter; got a batch of shape {lora.batch_shape} "
                         f"(split it with unstack_loras)")
    if model_config is not None:
        check_lora(lora, model_config)
    config, L = lora.config, lora.num_layers
    tensors = {}
    for m in lora.modules:
        a, b = np.asarray(lora.A[m]), np.asarray(lora.B[m])
        for l, r in enumerate(config.ranks(m, L)):
            tensors[peft_key(m, l, "A")] = np.ascontiguousarray(a[l, :r])
            tensors[peft_key(m, l, "B")] = np.ascontiguousarray(b[l, :, :r])
    rank_pattern, alpha_pattern = _patterns(config, L)
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": config.rank, "lora_alpha": _number(config.alpha), "use_rslora": config.use_rslora,
        "target_modules": list(lora.modules), "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_dora": False,
        "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "init_lora_weights": True, "inference_mode": True,
    }
    with atomic_dir(path) as tmp:
        save_file(tensors, os.path.join(tmp, SAFETENSORS_NAME), metadata={"format": "pt"})
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(adapter_config, f, indent=2)
    return path


def recorded_base_model(path: str) -> str | None:
    """The ``base_model_name_or_path`` an adapter folder records (None when it records none)."""
    cfg, _ = _read_config(path)
    return cfg.get("base_model_name_or_path")


def load_adapter_for(path: str, base_model) -> LoRA:
    """The PEFT adapter at ``path`` for ``base_model`` (a `BaseModel`); an adapter made for another base model
    (another recorded name, or factor shapes that do not fit) is an error naming the folder and both models."""
    recorded = recorded_base_model(path)
    if not base_model.made_for(recorded):
        raise ValueError(f"{path}: this adapter was made for base model {recorded!r}, not {base_model.name!r} "
                         f"({base_model.hub_name}); pass --model {recorded}")
    try:
        return load_peft_adapter(path, base_model.config)
    except ValueError as e:
        raise ValueError(f"{path}: does not fit base model {base_model.name!r} ({e})") from None
