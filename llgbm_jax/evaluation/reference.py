"""PyTorch references for comparisons (needs the ``torch`` extra): transformers models and tokenizers on the
same files as our `load_base_model`, a strict PEFT loader, and task scoring (option log-likelihood, greedy
generation, accuracy) as `llgbm_jax.evaluation` scores."""

from __future__ import annotations

import copy
import os
import warnings


def torch_model(name_or_path: str, dtype: str = "float32"):
    """transformers' ``AutoModelForCausalLM`` (eval mode) for what `load_base_model` accepts: an embedded
    name or a ``.gguf`` file (transformers dequantizes the same GGUF), a Hugging Face folder, or a hub id."""
    import torch
    from transformers import AutoModelForCausalLM

    from llgbm_jax.base.checkpoint import MARKER
    from llgbm_jax.base.model import EMBEDDED, embedded_gguf_path

    path = embedded_gguf_path(name_or_path) if name_or_path in EMBEDDED else os.path.expanduser(name_or_path)
    kwargs = {"dtype": getattr(torch, dtype)}
    if path.endswith(".gguf"):
        return AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                    **kwargs).eval()
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
        try:
            pm = PeftModel.from_pretrained(copy.deepcopy(model) if copy_model else model, str(folder))
        except UserWarning as w:  # PEFT >= 0.22 warns about unexpected keys itself
            if "unexpected adapter keys" not in str(w):
                raise
            raise ValueError(f"{folder}: saved keys differ from PeftModel's LoRA parameters: {w}") from None
    with safe_open(os.path.join(folder, "adapter_model.safetensors"), "numpy") as f:
        saved = set(f.keys())
    loaded = set(get_peft_model_state_dict(pm, save_embedding_layers=False))
    if saved != loaded:
        raise ValueError(f"{folder}: saved keys differ from PeftModel's LoRA parameters: only saved "
                         f"{sorted(saved - loaded)[:5]}, only in PeftModel {sorted(loaded - saved)[:5]}")
    return pm.eval()


def torch_tokenizer(name_or_path: str):
    """transformers' tokenizer of what `torch_model` loads (an embedded name, a ``.gguf`` file, a folder)."""
    from transformers import AutoTokenizer

    from llgbm_jax.base.model import EMBEDDED, embedded_gguf_path

    path = embedded_gguf_path(name_or_path) if name_or_path in EMBEDDED else os.path.expanduser(name_or_path)
    if path.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return AutoTokenizer.from_pretrained(path)


# --- task scoring in PyTorch (the reference for llgbm_jax.evaluation) ----------------------------------

def torch_option_scores(model, tokenizer, prompts, options_per_prompt, *, batch_size: int = 16,
                        show_progress: bool = False, end_of_turn: int | None = None):
    """Summed log-probability of each option string after each (already formatted) prompt, with a
    transformers/PEFT ``model``: the reference for `llgbm_jax.evaluation.score_options` (pass its
    ``end_of_turn`` token, `llgbm_jax.tasks.formats.end_of_turn_id`, for questions whose options start one another).

    Prompt and option are tokenized jointly and split by `split_answer_tokens` (as ours does); every
    (prompt, option) pair is one full sequence, right padded, batched by length (``batch_size`` rows).
    Forward in the model's dtype (float32 for the reference), log-softmax and sums in float64, only at
    the option tokens. Returns one float64 array per prompt.
    """
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from llgbm_jax.scoring.accuracy import split_answer_tokens

    if len(prompts) != len(options_per_prompt):
        raise ValueError(f"{len(prompts)} prompts but {len(options_per_prompt)} option lists")
    rows = []  # (question, option, prefix length, full token sequence)
    for i, (p, opts) in enumerate(zip(prompts, options_per_prompt)):
        prefix, toks, _ = split_answer_tokens(tokenizer, p, opts, end_of_turn)
        rows += [(i, j, len(prefix), prefix + t) for j, t in enumerate(toks)]
    scores = [np.zeros(len(o), np.float64) for o in options_per_prompt]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][3]))
    with torch.inference_mode(), tqdm(total=len(rows), disable=not show_progress, desc="torch scoring",
                                      unit="option") as bar:
        for s in range(0, len(order), batch_size):
            batch = [rows[r] for r in order[s:s + batch_size]]
            width = max(len(seq) for *_, seq in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (*_, seq) in enumerate(batch):
                ids[r, :len(seq)], mask[r, :len(seq)] = torch.tensor(seq), 1
            keep = width - min(n for _, _, n, _ in batch) + 1  # logits from the first predicted position on
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                           logits_to_keep=keep).logits
            first = width - keep  # sequence position of logits[:, 0]
            for r, (i, j, n, seq) in enumerate(batch):
                pos = torch.arange(n - 1, len(seq) - 1)
                logp = torch.log_softmax(logits[r, pos - first].double(), dim=-1)
                scores[i][j] = float(logp[torch.arange(len(pos)), torch.tensor(seq[n:])].sum())
            bar.update(len(batch))
    return scores


def torch_generate_texts(model, tokenizer, prompts, *, max_new_tokens: int = 256, batch_size: int = 16,
                         show_progress: bool = False) -> list[str]:
    """Greedy completions with transformers' ``generate`` (left padded, stopping at the tokenizer's and
    the generation config's end-of-sequence ids), cut at the first of those and decoded without special
    tokens: the reference for `llgbm_jax.evaluation.generate_texts`."""
    import torch
    from tqdm.auto import tqdm

    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = {*(eos if isinstance(eos, (list, tuple)) else [eos]), tokenizer.eos_token_id} - {None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    enc = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    texts: list[str | None] = [None] * len(enc)
    device = next(model.parameters()).device
    with torch.inference_mode(), tqdm(total=len(enc), disable=not show_progress, desc="torch generation",
                                      unit="q") as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            width = max(len(enc[i]) for i in idx)
            ids = torch.tensor([[pad] * (width - len(enc[i])) + enc[i] for i in idx])
            mask = torch.tensor([[0] * (width - len(enc[i])) + [1] * len(enc[i]) for i in idx])
            new = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=sorted(eos), pad_token_id=pad)
            for i, row in zip(idx, new[:, width:].tolist()):
                cut = next((k for k, t in enumerate(row) if t in eos), len(row))
                texts[i] = tokenizer.decode(row[:cut], skip_special_tokens=True)
            bar.update(len(idx))
    return texts


def torch_accuracy(model, tokenizer, task, records, prompt_model, *, batch_size: int = 16,
                   max_new_tokens: int = 256, show_progress: bool = False) -> dict:
    """Accuracy of a transformers/PEFT ``model`` on ``records`` of ``task`` (a `Task` or its name), scored
    as `llgbm_jax.evaluation.compute_accuracy_with_lora` scores: prompts by `Task.format_prompt(record,
    prompt_model)` (``prompt_model``: our `BaseModel`, whose chat template formats them), mcq/cloze/bool by
    the highest summed option log-probability (`torch_option_scores`, whole replies where options start one
    another), gsm8k by greedy generation
    (`torch_generate_texts`) read with `Task.parse`. Returns ``accuracy``, ``correct``, ``total`` and
    per-question ``details`` (``pred``, ``gold``, ``correct``, and ``logprobs`` or ``text``)."""
    import numpy as np

    from llgbm_jax.tasks.registry import resolve_task
    from llgbm_jax.tasks.formats import end_of_turn_id

    task = resolve_task(task)
    records = list(records)
    prompts = [task.format_prompt(r, prompt_model) for r in records]
    if task.task_type == "gsm8k":
        texts = torch_generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, show_progress=show_progress)
        preds = [task.parse(t, r) for t, r in zip(texts, records)]
        extra = [{"text": t} for t in texts]
    else:
        options = [task.options(r) for r in records]
        scores = torch_option_scores(model, tokenizer, prompts, options, batch_size=batch_size,
                                     show_progress=show_progress, end_of_turn=end_of_turn_id(prompt_model))
        preds = [o[int(np.argmax(s))] for o, s in zip(options, scores)]
        extra = [{"logprobs": [float(x) for x in s]} for s in scores]
    details = [{"pred": p, "gold": task.answer(r), "correct": bool(task.is_correct(p, r)), **e}
               for p, r, e in zip(preds, records, extra)]
    correct = sum(d["correct"] for d in details)
    return {"accuracy": correct / len(details) if details else 0.0, "correct": int(correct),
            "total": len(details), "details": details}
