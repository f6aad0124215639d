"""Shared fixtures: tiny random transformers models of each family, and the real SmolLM2-135M."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch

DATA_DIR = os.environ.get("LLGBM_DATA_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
FAMILIES = ("llama", "qwen2", "qwen3")

_TINY = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, bos_token_id=1,
             eos_token_id=2, pad_token_id=0)


def make_tiny_torch_model(family: str, seed: int = 0, **overrides):
    """A small random transformers causal LM of ``family`` (weights perturbed away from init)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    cfg_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                          "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[family]
    kwargs = dict(_TINY, **({"head_dim": 32} if family == "qwen3" else {}))
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms start at 1 and biases at 0: move everything off init
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_model(request, tmp_path_factory):
    """``(family, torch_model, folder)``: a tiny model saved as a Hugging Face folder."""
    model = make_tiny_torch_model(request.param)
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.save_pretrained(folder)
    return request.param, model, str(folder)


def padded_batch(rng: np.random.RandomState, lengths, width: int, vocab: int, side: str):
    ids = rng.randint(3, vocab, (len(lengths), width)).astype(np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        if side == "left":
            mask[i, width - n:] = 1
        else:
            mask[i, :n] = 1
    ids[mask == 0] = 0
    return ids, mask


def hf_positions(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, -1) - 1, 0)


@torch.no_grad()
def hf_forward(model, ids, mask):
    """transformers' logits and last hidden state (after the final norm), positions from the mask."""
    out = model(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                position_ids=torch.as_tensor(hf_positions(mask)), output_hidden_states=True)
    return out.logits.float().numpy(), out.hidden_states[-1].float().numpy()


def max_diff_real(a, b, mask) -> float:
    real = np.asarray(mask).astype(bool)
    return float(np.abs(np.asarray(a)[real] - np.asarray(b)[real]).max())


@torch.no_grad()
def hf_generate(model, ids, mask, n, **kwargs) -> np.ndarray:
    """transformers' greedy new tokens, padded with ``pad_token_id`` to ``n`` if it stopped early."""
    out = model.generate(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), max_new_tokens=n,
                         do_sample=False, **kwargs)[:, ids.shape[1]:].numpy()
    pad = kwargs.get("pad_token_id", model.generation_config.pad_token_id)
    return np.pad(out, ((0, 0), (0, n - out.shape[1])), constant_values=pad)


def hf_logits(model, ids, mask) -> np.ndarray:
    return hf_forward(model, ids, mask)[0]


@pytest.fixture(scope="module")
def torch_one_thread():
    """The reference runs with one torch thread: on this shared 2-core machine two threads oversubscribe
    the cores and slow transformers' small ops (generation, short forwards) down several-fold. Results
    are unaffected beyond summation order."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def torch_option_logliks(model, tok, prompt: str, options) -> list[float]:
    """transformers' summed log-probability of each answer string after ``prompt``: full forwards of
    prompt + answer (right padded), log-softmax in float64 over the answer's tokens."""
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    seqs = [tok(prompt + o, add_special_tokens=False)["input_ids"] for o in options]
    assert all(s[:len(p_ids)] == p_ids for s in seqs)
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    out = []
    for i, s in enumerate(seqs):  # log-softmax over the vocabulary at the answer's positions only
        logp = torch.log_softmax(logits[i, len(p_ids) - 1:len(s) - 1].double(), -1)
        out.append(float(logp[torch.arange(len(s) - len(p_ids)), torch.tensor(s[len(p_ids):])].sum()))
    return out


def run_cli(argv, **kwargs):
    """Run an ``llgbm-jax`` command in this process and return what its ``run_<command>`` returned (the library
    function's result); ``kwargs`` go to it (e.g. ``base_model=`` for ``train``)."""
    from llgbm_jax.cli.main import COMMANDS, build_parser

    args = build_parser().parse_args(argv)
    return getattr(COMMANDS[args.command][0], "run_" + args.command.replace("-", "_"))(args, **kwargs)


def help_text(argv) -> str:
    """What ``llgbm-jax <argv> --help`` prints (it must exit with status 0)."""
    import contextlib
    import io

    from llgbm_jax.cli.main import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        build_parser().parse_args(list(argv) + ["--help"])
    assert e.value.code == 0
    return out.getvalue()


# PEFT loading in tests: any warning is an error and the key sets must match exactly.
from llgbm_jax.evaluation.reference import load_peft_strict as load_in_peft  # noqa: E402,F401  (used by the tests)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct as our `BaseModel` (float32)."""
    from llgbm_jax.base.model import load_base_model

    return load_base_model("smollm2-135m-instruct")


def tiny_llama_with_smollm2_vocab(smollm2, folder, *, seed: int = 3, **overrides):
    """A tiny random Llama with SmolLM2's vocabulary, saved to ``folder``: ``(torch_model, BaseModel)`` on the same
    weights with SmolLM2's tokenizer (ids 1/2 are <|im_start|>/<|im_end|> in both)."""
    from llgbm_jax.base.model import BaseModel, load_base_model

    torch_model = make_tiny_torch_model("llama", seed=seed, vocab_size=smollm2.config.vocab_size, hidden_size=32,
                                        intermediate_size=48, num_attention_heads=2, num_key_value_heads=1,
                                        bos_token_id=1, eos_token_id=2, pad_token_id=2, **overrides)
    torch_model.save_pretrained(folder)
    weights = load_base_model(str(folder))
    return torch_model, BaseModel(weights.config, weights.params, smollm2.tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def tiny_smollm2_vocab(smollm2, tmp_path_factory):
    """A tiny random Llama with SmolLM2's vocabulary and tokenizer (fast to train and score):
    ``(torch_model, BaseModel)`` on the same weights."""
    return tiny_llama_with_smollm2_vocab(smollm2, tmp_path_factory.mktemp("tiny-smollm2-vocab"))


@pytest.fixture(scope="session")
def smollm2_torch():
    """transformers' PyTorch model and tokenizer on the same GGUF file: the reference."""
    from transformers import AutoTokenizer

    from llgbm_jax.base.model import embedded_gguf_path
    from llgbm_jax.evaluation.reference import torch_model

    path = embedded_gguf_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    model = torch_model("smollm2-135m-instruct")
    return model, tok


@pytest.fixture(scope="session")
def tiny_folder(smollm2, tmp_path_factory):
    """``(folder, torch_model, ours)``: a tiny random Llama with SmolLM2's vocabulary and tokenizer saved as
    a Hugging Face folder (so a run config can name it as its base model), and our `BaseModel` of it."""
    from llgbm_jax.base import load_base_model

    folder = str(tmp_path_factory.mktemp("tiny-verify"))
    torch_model, _ = tiny_llama_with_smollm2_vocab(smollm2, folder, seed=5, initializer_range=0.3)
    smollm2.tokenizer.save_pretrained(folder)
    return folder, torch_model, load_base_model(folder)
