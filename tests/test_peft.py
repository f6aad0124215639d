"""PEFT interop against PEFT itself: adapters made by PEFT load into our decoder with PeftModel's logits;
our adapters, exported, load in ``PeftModel.from_pretrained`` with no warnings and our logits; round
trips are bitwise; every unsupported or broken input is refused with an error naming the file or key.

Tolerances (float32 logits, every real position): 1e-4 on tiny random models, 1e-3 on SmolLM2-135M.
PEFT's warnings are errors while it loads our folders, and the saved key set must equal PeftModel's
LoRA state dict exactly (PEFT only warns about missing keys, so unexpected ones are checked directly).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import torch

from llgbm_jax.base.model import load_base_model
from llgbm_jax.lora.adapter import ALL_MODULES, LoRAConfig, init_lora, load_lora, stack_loras
from llgbm_jax.lora.peft import load_peft_adapter, peft_key, save_peft_adapter

from conftest import hf_logits, load_in_peft, make_tiny_torch_model, max_diff_real, padded_batch

TINY_TOL, SMOLLM2_TOL = 1e-4, 1e-3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- helpers --------------------------------------------------------------------------------------

def make_peft_adapter(torch_model, folder, seed=0, b_std=0.1, safe_serialization=True, **lora_kwargs):
    """A PEFT LoRA on a copy of ``torch_model`` with random non-zero B, saved to ``folder``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    pm = get_peft_model(copy.deepcopy(torch_model), LoraConfig(task_type="CAUSAL_LM", **lora_kwargs))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(b_std * torch.randn(p.shape, generator=gen))
    pm.save_pretrained(str(folder), safe_serialization=safe_serialization)
    return pm.eval()


def assert_same_lora(a, b):
    assert a.config == b.config
    for m in a.modules:
        assert a.A[m].dtype == b.A[m].dtype
        np.testing.assert_array_equal(a.A[m], b.A[m])
        np.testing.assert_array_equal(a.B[m], b.B[m])


def file_tensors(folder):
    from safetensors.numpy import load_file

    return load_file(os.path.join(folder, "adapter_model.safetensors"))


def tiny_batch(vocab, seed=0):
    return padded_batch(np.random.RandomState(seed), [7, 4, 6], 7, vocab, "left")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    family, torch_model, folder = tiny_model
    return torch_model, load_base_model(folder)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-peft")
    model = make_tiny_torch_model("llama", seed=5)
    model.save_pretrained(folder)
    return model, load_base_model(str(folder))


# --- PEFT -> ours, ours -> PEFT, on each tiny family ----------------------------------------------

def test_peft_adapter_loads_with_peft_logits(tiny, tmp_path):
    """A PEFT-made adapter (all 7 modules, random B) gives PeftModel's logits in our decoder; export of
    the import writes PEFT's tensors bit for bit, and import -> export -> import is bitwise identical."""
    torch_model, ours = tiny
    pm = make_peft_adapter(torch_model, tmp_path / "peft", r=4, lora_alpha=8, target_modules=list(ALL_MODULES))
    lora = load_peft_adapter(str(tmp_path / "peft"), ours.config)
    assert lora.config == LoRAConfig(4, 8) and lora.A["q_proj"].dtype == np.float32
    ids, mask = tiny_batch(ours.config.vocab_size)
    want = hf_logits(pm, ids, mask)
    got = ours.logits(ids, mask, lora)
    assert max_diff_real(got, want, mask) <= TINY_TOL
    assert max_diff_real(got, ours.logits(ids, mask), mask) > 1e-2  # the adapter really changes the model

    save_peft_adapter(lora, str(tmp_path / "ours"), "tiny")
    peft_t, ours_t = file_tensors(tmp_path / "peft"), file_tensors(tmp_path / "ours")
    assert set(peft_t) == set(ours_t)
    for k in peft_t:
        np.testing.assert_array_equal(peft_t[k], ours_t[k])
    assert_same_lora(load_peft_adapter(str(tmp_path / "ours"), ours.config), lora)


def test_our_adapter_loads_in_peft_with_our_logits(tiny, tmp_path):
    """Our random LoRA, exported, loads in PeftModel (no warnings, no missing/unexpected keys), with the
    right config and the same logits."""
    torch_model, ours = tiny
    lora = init_lora(jax.random.PRNGKey(3), ours.config, LoRAConfig(8, 16), random_b=True, b_std=0.05)
    folder = save_peft_adapter(lora, str(tmp_path / "ours"), base_model_name_or_path="tiny-model",
                               model_config=ours.config)
    pm = load_in_peft(torch_model, folder)
    cfg = pm.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.use_rslora, set(cfg.target_modules)) == (8, 16, False, set(ALL_MODULES))
    assert cfg.task_type == "CAUSAL_LM" and cfg.base_model_name_or_path == "tiny-model"
    assert not cfg.use_dora and cfg.bias == "none"
    ids, mask = tiny_batch(ours.config.vocab_size, seed=1)
    got = ours.logits(ids, mask, lora)
    assert max_diff_real(hf_logits(pm, ids, mask), got, mask) <= TINY_TOL
    assert max_diff_real(got, ours.logits(ids, mask), mask) > 1e-2


# --- rsLoRA, rank_pattern / alpha_pattern, options ------------------------------------------------

@pytest.mark.parametrize("rslora", [False, True])
def test_rank_and_alpha_patterns_both_ways(llama, tmp_path, rslora):
    """Per-layer and per-module ranks and alphas (zero-padded inside our arrays) with and without rsLoRA:
    PEFT -> ours, ours -> PEFT, and bitwise round trips that write back exactly PEFT's tensors."""
    torch_model, ours = llama
    kwargs = dict(r=4, lora_alpha=8, use_rslora=rslora, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                  rank_pattern={"model.layers.1.self_attn.q_proj": 2, "o_proj": 6},
                  alpha_pattern={"v_proj": 3, "model.layers.0.mlp.down_proj": 5})
    pm = make_peft_adapter(torch_model, tmp_path / "peft", seed=1, **kwargs)
    lora = load_peft_adapter(str(tmp_path / "peft"), ours.config)
    c = lora.config
    assert c.use_rslora == rslora and c.max_rank == 6
    assert c.ranks("q_proj", 2) == (4, 2) and c.ranks("o_proj", 2) == (6, 6) and c.ranks("v_proj", 2) == (4, 4)
    assert c.alphas("v_proj", 2) == (3, 3) and c.alphas("down_proj", 2) == (5, 8)
    assert lora.A["q_proj"].shape == (2, 6, 64) and not np.any(np.asarray(lora.A["q_proj"])[1, 2:])
    ids, mask = tiny_batch(ours.config.vocab_size)
    assert max_diff_real(ours.logits(ids, mask, lora), hf_logits(pm, ids, mask), mask) <= TINY_TOL

    save_peft_adapter(lora, str(tmp_path / "ours"))
    exported = json.load(open(tmp_path / "ours" / "adapter_config.json"))
    assert exported["use_rslora"] == rslora and exported["r"] == 4 and exported["lora_alpha"] == 8
    for k, v in file_tensors(tmp_path / "peft").items():
        np.testing.assert_array_equal(file_tensors(tmp_path / "ours")[k], v)
    assert_same_lora(load_peft_adapter(str(tmp_path / "ours"), ours.config), lora)
    pm2 = load_in_peft(torch_model, tmp_path / "ours")
    assert max_diff_real(hf_logits(pm2, ids, mask), hf_logits(pm, ids, mask), mask) <= TINY_TOL

    # and an adapter born on our side with per-layer ranks goes to PEFT too
    ours_cfg = LoRAConfig(4, 8, ("k_proj", "up_proj"), use_rslora=rslora, layer_ranks={"k_proj": (1, 3)},
                          layer_alphas={"up_proj": (2, 6)})
    mine = init_lora(jax.random.PRNGKey(0), ours.config, ours_cfg, random_b=True, b_std=0.1)
    pm3 = load_in_peft(torch_model, save_peft_adapter(mine, str(tmp_path / "mine")))
    assert max_diff_real(hf_logits(pm3, ids, mask), ours.logits(ids, mask, mine), mask) <= TINY_TOL


def test_regex_target_modules_and_fan_in_fan_out(llama, tmp_path):
    """A regex target_modules string is resolved as PEFT does; fan_in_fan_out=True leaves nn.Linear
    LoRA factors as they are (PEFT resets the flag for Linear layers), so logits still agree."""
    torch_model, ours = llama
    pm = make_peft_adapter(torch_model, tmp_path / "peft", r=2, lora_alpha=4,
                           target_modules=r".*\.(q_proj|gate_proj)")
    cfg_path = tmp_path / "peft" / "adapter_config.json"
    cfg = json.load(open(cfg_path))
    lora = load_peft_adapter(str(tmp_path / "peft"))
    assert lora.modules == ("q_proj", "gate_proj") and lora.num_layers == 2
    ids, mask = tiny_batch(ours.config.vocab_size)
    want = hf_logits(pm, ids, mask)
    assert max_diff_real(ours.logits(ids, mask, lora), want, mask) <= TINY_TOL

    json.dump({**cfg, "fan_in_fan_out": True}, open(cfg_path, "w"))
    flipped = load_peft_adapter(str(tmp_path / "peft"))
    assert_same_lora(flipped, lora)
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that it resets fan_in_fan_out for nn.Linear
        pm2 = PeftModel.from_pretrained(copy.deepcopy(torch_model), str(tmp_path / "peft")).eval()
    assert max_diff_real(hf_logits(pm2, ids, mask), ours.logits(ids, mask, flipped), mask) <= TINY_TOL


def test_adapter_model_bin(llama, tmp_path):
    torch_model, ours = llama
    make_peft_adapter(torch_model, tmp_path / "st", r=4, lora_alpha=8, target_modules=["v_proj", "up_proj"])
    make_peft_adapter(torch_model, tmp_path / "bin", r=4, lora_alpha=8, target_modules=["v_proj", "up_proj"],
                      safe_serialization=False)
    assert os.listdir(tmp_path / "bin").count("adapter_model.bin") == 1
    assert_same_lora(load_peft_adapter(str(tmp_path / "bin")), load_peft_adapter(str(tmp_path / "st")))


# --- bad inputs -----------------------------------------------------------------------------------

@pytest.fixture()
def good(llama, tmp_path):
    """A valid exported folder (q, k, down at rank 4) and its paths."""
    _, ours = llama
    lora = init_lora(jax.random.PRNGKey(0), ours.config, LoRAConfig(4, 8, ("q_proj", "k_proj", "down_proj")),
                     random_b=True)
    folder = save_peft_adapter(lora, str(tmp_path / "adapter"))
    return folder, os.path.join(folder, "adapter_config.json"), os.path.join(folder, "adapter_model.safetensors")


def _edit_config(path, **changes):
    cfg = json.load(open(path))
    cfg.update(changes)
    json.dump(cfg, open(path, "w"))


def _edit_tensors(path, fn):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path)


K0 = peft_key("k_proj", 0, "B")
BAD = {
    "truncated safetensors": (lambda c, w: open(w, "r+b").truncate(os.path.getsize(w) // 2),
                              r"adapter_model\.safetensors: unreadable safetensors"),
    "truncated header": (lambda c, w: open(w, "r+b").truncate(5), r"adapter_model\.safetensors: unreadable"),
    "wrong shape": (lambda c, w: _edit_tensors(w, lambda t: t.update({K0: t[K0][:-1]})),
                    rf"{K0} has shape \(31, 4\), expected \(32, 4\)"),
    "3-d tensor": (lambda c, w: _edit_tensors(w, lambda t: t.update({K0: t[K0][None]})), rf"{K0} has shape"),
    "config rank disagrees": (lambda c, w: _edit_config(c, r=8), r"has shape \(4, 64\), expected \(8, 64\).*rank 8"),
    "unknown target module": (lambda c, w: _edit_config(c, target_modules=["q_proj", "k_proj", "down_proj", "lm_head"]),
                              r"unknown module\(s\) \['lm_head'\]"),
    "dora": (lambda c, w: _edit_config(c, use_dora=True), r"use_dora=True is not supported"),
    "bias": (lambda c, w: _edit_config(c, bias="lora_only"), r"bias='lora_only'"),
    "other peft type": (lambda c, w: _edit_config(c, peft_type="LOHA"), r"peft_type 'LOHA'"),
    "modules_to_save": (lambda c, w: _edit_config(c, modules_to_save=["lm_head"]), r"modules_to_save"),
    "layers_to_transform": (lambda c, w: _edit_config(c, layers_to_transform=[0]), r"layers_to_transform"),
    "pissa init": (lambda c, w: _edit_config(c, init_lora_weights="pissa"), r"init_lora_weights='pissa'"),
    "task type": (lambda c, w: _edit_config(c, task_type="SEQ_CLS"), r"task_type 'SEQ_CLS'"),
    "partial layers": (lambda c, w: _edit_config(c, target_modules=r"model\.layers\.0\..*\.(q|k)_proj|.*down_proj"),
                       r"selects q_proj in layers \[0\] only"),
    "module not targeted": (lambda c, w: _edit_config(c, target_modules=["q_proj", "down_proj"]),
                            r"key '[^']*k_proj[^']*' is for k_proj, which target_modules"),
    "unexpected key (DoRA magnitude)": (
        lambda c, w: _edit_tensors(w, lambda t: t.update(
            {"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": np.ones(64, np.float32)})),
        r"unexpected key 'base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_magnitude_vector'"),
    "unknown layer key": (lambda c, w: _edit_tensors(w, lambda t: t.update(
        {peft_key("q_proj", 7, "A"): t[peft_key("q_proj", 0, "A")]})), r"layers\.7\..*is for layer 7"),
    "missing key": (lambda c, w: _edit_tensors(w, lambda t: t.pop(peft_key("down_proj", 1, "B"))),
                    rf"missing key '{peft_key('down_proj', 1, 'B')}'"),
    "bad json": (lambda c, w: open(c, "w").write("{"), r"adapter_config\.json: invalid JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_are_refused_with_the_key(llama, good, case):
    folder, config_path, weights_path = good
    mutate, message = BAD[case]
    mutate(config_path, weights_path)
    with pytest.raises(ValueError, match=message):
        load_peft_adapter(folder, llama[1].config)


def test_missing_files_and_batches(llama, good, tmp_path):
    folder, config_path, weights_path = good
    os.remove(weights_path)
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        load_peft_adapter(folder)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_peft_adapter(str(tmp_path))
    _, ours = llama
    two = stack_loras([init_lora(jax.random.PRNGKey(i), ours.config, LoRAConfig(2, 4)) for i in range(2)])
    with pytest.raises(ValueError, match="one adapter"):
        save_peft_adapter(two, str(tmp_path / "x"))
    small = dataclasses.replace(ours.config, intermediate_size=48)
    with pytest.raises(ValueError, match=r"gate_proj: A \(2, 2, 64\) / B \(2, 96, 2\)"):
        save_peft_adapter(init_lora(jax.random.PRNGKey(0), ours.config, LoRAConfig(2, 4)), str(tmp_path / "y"),
                          model_config=small)
    assert not os.path.exists(tmp_path / "y")


# --- command-line converters ----------------------------------------------------------------------

def test_converters(llama, good, tmp_path):
    folder = good[0]
    for script in ("peft_to_jax.py", "export_peft.py"):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "convert", script), "--help"], capture_output=True,
                             text=True, check=True).stdout
        assert "usage:" in out
    npz = str(tmp_path / "lora.safetensors")
    subprocess.run([sys.executable, os.path.join(ROOT, "convert", "peft_to_jax.py"), folder, npz], check=True,
                   capture_output=True)
    assert_same_lora(load_lora(npz), load_peft_adapter(folder))
    back = str(tmp_path / "back")
    subprocess.run([sys.executable, os.path.join(ROOT, "convert", "export_peft.py"), npz, back, "--base-model", "x"],
                   check=True, capture_output=True)
    for k, v in file_tensors(folder).items():
        np.testing.assert_array_equal(file_tensors(back)[k], v)


# --- the real SmolLM2-135M-Instruct ---------------------------------------------------------------

def _smollm2_batch(smollm2):
    prompts = [smollm2.chat_prompt("What is the capital of France?"), smollm2.chat_prompt("Count to three.")]
    return smollm2.encode(prompts, pad_to_multiple_of=None)


@pytest.mark.slow
def test_smollm2_peft_adapter_in_our_decoder(smollm2, smollm2_torch, tmp_path):
    pm = make_peft_adapter(smollm2_torch[0], tmp_path / "peft", r=8, lora_alpha=16, b_std=0.02,
                           target_modules=list(ALL_MODULES))
    lora = load_peft_adapter(str(tmp_path / "peft"), smollm2.config)
    ids, mask = _smollm2_batch(smollm2)
    got = smollm2.logits(ids, mask, lora)
    assert max_diff_real(got, hf_logits(pm, ids, mask), mask) <= SMOLLM2_TOL
    assert max_diff_real(got, smollm2.logits(ids, mask), mask) > 0.1


@pytest.mark.slow
def test_smollm2_our_adapter_in_peft(smollm2, smollm2_torch, tmp_path):
    lora = init_lora(jax.random.PRNGKey(0), smollm2.config, LoRAConfig(8, 16), random_b=True, b_std=0.02)
    folder = save_peft_adapter(lora, str(tmp_path / "ours"), "HuggingFaceTB/SmolLM2-135M-Instruct",
                               model_config=smollm2.config)
    pm = load_in_peft(smollm2_torch[0], folder)
    ids, mask = _smollm2_batch(smollm2)
    got = smollm2.logits(ids, mask, lora)
    assert max_diff_real(hf_logits(pm, ids, mask), got, mask) <= SMOLLM2_TOL
    assert max_diff_real(got, smollm2.logits(ids, mask), mask) > 0.1


def test_the_peft_check_fails_on_missing_or_extra_keys(llama, good):
    """The harness above is not vacuous: a missing key is a PEFT warning (an error here), an extra
    key (silently ignored by PEFT) fails the key-set check."""
    torch_model, _ = llama
    folder, _, weights_path = good
    tensors = file_tensors(folder)
    _edit_tensors(weights_path, lambda t: t.pop(peft_key("q_proj", 1, "A")))
    with pytest.raises(UserWarning, match="missing adapter keys"):
        load_in_peft(torch_model, folder)
    _edit_tensors(weights_path, lambda t: t.update({**tensors, "base_model.model.model.extra.weight": tensors[K0]}))
    with pytest.raises(ValueError, match="saved keys differ"):
        load_in_peft(torch_model, folder)
