"""PyTorch references for comparisons (needs the ``torch`` extra): transformers models on the same files
as our `load_base_model`, and a strict PEFT loader."""

from __future__ import annotations

import copy
import os
import warnings


def torch_model(name_or_path: str, dtype: str = "float32"):
    """transformers' ``AutoModelForCausalLM`` (eval mode) for what `load_base_model` accepts: an embedded
    name or a ``.gguf`` file (transformers dequantizes the same GGUF), a Hugging Face folder, or a hub id."""
    import torch
    from transformers import AutoModelForCausalLM

    from llgbm_jax.models.base_model import EMBEDDED, embedded_gguf_path
    from llgbm_jax.models.checkpoint import MARKER

    path = embedded_gguf_path(name_or_path) if name_or_path in EMBEDDED else os.path.expanduser(name_or_path)
    kwargs = {"dtype": getattr(torch, dtype)}
    if path.endswith(".gguf"):
        return AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), **kwargs).eval()
    if os.path.isfile(os.path.join(path, MARKER)):
        raise ValueError(f"{path} is an llgbm_jax checkpoint: transformers cannot read it; "
                         f"point at the GGUF file or Hugging Face folder it was converted from")
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


def load_peft_strict(model, folder: str, *, copy_model: bool = True):
    """``PeftModel.from_pretrained`` where any warning (missing or unexpected keys included) is an error
    and the saved keys must equal the PeftModel's LoRA parameters. Wraps a copy of ``model`` unless
    ``copy_model=False``."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        pm = PeftModel.from_pretrained(copy.deepcopy(model) if copy_model else model, str(folder))
    with safe_open(os.path.join(folder, "adapter_model.safetensors"), "numpy") as f:
        saved = set(f.keys())
    loaded = set(get_peft_model_state_dict(pm, save_embedding_layers=False))
    if saved != loaded:
        raise ValueError(f"{folder}: saved keys differ from PeftModel's LoRA parameters: only saved "
                         f"{sorted(saved - loaded)[:5]}, only in PeftModel {sorted(loaded - saved)[:5]}")
    return pm.eval()
