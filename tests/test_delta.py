"""Probes (`llgbm_jax.conditions.probes`), behavioural deltas and their cache (`llgbm_jax.conditions.deltas`),
experiments/deltas.py.

- `behavioural_delta` equals the same mean of last-token hidden-state differences computed by
  transformers + PEFT on the same adapter folder: relative error ≤ 1e-4 on tiny Llama/Qwen2/Qwen3,
  ≤ 1e-3 on SmolLM2-135M (slow).
- A stacked batch of adapters (different ranks, alphas, rsLoRA, target modules) equals the adapters one
  by one; chunked probes equal unchunked; ``base_hidden`` given equals not given.
- The gradient with respect to the LoRA (stacked, chunked, inside jit) matches central finite differences.
- The cache recomputes exactly what changed (probe, adapter file, base model), nothing on a second call,
  and never reads a partial or stale entry; wrong adapter shapes fail naming the file.
- Probes are deterministic, hashed by content, within the length limit, and never eval questions.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llgbm_jax.base.checkpoint import save_checkpoint
from llgbm_jax.base.model import BaseModel, load_base_model, model_hash
from llgbm_jax.conditions import deltas as delta
from llgbm_jax.conditions import probes as probes_mod
from llgbm_jax.lora.adapter import LoRAConfig, zeros_lora
from llgbm_jax.lora.ops import lora_hash, stack_any
from llgbm_jax.lora.peft import load_peft_adapter, save_peft_adapter
from llgbm_jax.tasks.registry import get_task
from llgbm_jax.utils.io import CacheWarning, hash_arrays

from conftest import DATA_DIR, hf_forward, load_in_peft, make_tiny_torch_model, padded_batch, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TOL, SMOLLM2_TOL = 1e-4, 1e-3  # ‖ours − PEFT‖ / ‖PEFT‖ of the delta, float32
BATCH_TOL = 1e-5  # stacked / chunked against one by one, relative
FD_TOL = 1e-3  # gradient · direction against central differences (eps 3e-3), relative


def random_lora(model_config, cfg: LoRAConfig, seed: int, b_std: float = 0.2):
    """A LoRA of `init_lora`'s shapes drawn with numpy (A ~ N(0, 1/in), B ~ N(0, b_std²)): jax.random would
    compile once per array shape, which dominated this file's time."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: zeros_lora(model_config, cfg))
    draw = lambda std, s: jnp.asarray(rng.normal(0.0, std, s.shape).astype(np.float32))
    return dataclasses.replace(shapes, A={m: draw(s.shape[-1] ** -0.5, s) for m, s in shapes.A.items()},
                               B={m: draw(b_std, s) for m, s in shapes.B.items()})


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def random_probes(num: int, width: int, vocab: int, seed: int = 0):
    rng = np.random.RandomState(seed)
    ids, mask = padded_batch(rng, rng.randint(3, width + 1, num), width, vocab, "left")
    return probes_mod.probe_set([f"random probe {i}" for i in range(num)], ids, mask)


def peft_reference_delta(torch_model, folder, ids, mask):
    """transformers + PEFT: mean over probes of (adapted − base) final hidden state at the last real token."""
    ids, mask = np.array(ids), np.array(mask)  # writable copies (torch warns on read-only arrays)
    last = np.where(mask > 0, np.arange(ids.shape[1]), 0).max(-1)
    rows = np.arange(len(ids))
    base = hf_forward(torch_model, ids, mask)[1][rows, last]
    adapted = hf_forward(load_in_peft(torch_model, folder), ids, mask)[1][rows, last]
    return (adapted - base).mean(0), base


@pytest.fixture(scope="module")
def tiny(smollm2, tmp_path_factory):
    """A tiny random Llama with SmolLM2's vocabulary and tokenizer (as in test_teachers)."""
    torch_model = make_tiny_torch_model("llama", seed=7, vocab_size=smollm2.config.vocab_size, hidden_size=32,
                                        intermediate_size=48, num_attention_heads=2, num_key_value_heads=1,
                                        bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=0.3)
    folder = tmp_path_factory.mktemp("tiny-delta")
    torch_model.save_pretrained(folder)
    weights = load_base_model(str(folder))
    return torch_model, BaseModel(weights.config, weights.params, smollm2.tokenizer, name="tiny-llama")


# --- deltas against PyTorch + PEFT ------------------------------------------------------------------

def test_delta_equals_peft(tiny_model, tmp_path):
    family, torch_model, folder = tiny_model
    ours = load_base_model(folder)
    probes = random_probes(5, 16, torch_model.config.vocab_size)
    lora = random_lora(ours.config, LoRAConfig(4, 6.0), 3, b_std=0.1)
    ref, base_ref = peft_reference_delta(torch_model, save_peft_adapter(lora, str(tmp_path / "a")), probes.ids,
                                         probes.mask)
    got = delta.behavioural_delta(ours, lora, probes)
    base = delta.probe_hidden(ours, probes)
    print(f"{family}: |delta| {np.linalg.norm(ref):.3f}, relative error {rel(got, ref):.1e}, "
          f"base hidden {rel(base, base_ref):.1e}")
    assert got.shape == (ours.config.hidden_size,) and got.dtype == jnp.float32
    assert rel(base, base_ref) <= TINY_TOL
    assert rel(got, ref) <= TINY_TOL
    assert np.linalg.norm(ref) > 0.05 * np.linalg.norm(base_ref, axis=1).mean()  # the adapter matters


@pytest.mark.slow
def test_smollm2_delta_equals_peft(smollm2, smollm2_torch, tmp_path):
    probes = probes_mod.build_probes(smollm2, 4, 96, seed=0, data_dir=DATA_DIR)  # BoolQ prompts: 83+ tokens
    lora = random_lora(smollm2.config, LoRAConfig(8, 16.0), 0, b_std=0.01)
    ref, _ = peft_reference_delta(smollm2_torch[0], save_peft_adapter(lora, str(tmp_path / "a")), probes.ids,
                                  probes.mask)
    got = delta.behavioural_delta(smollm2, lora, probes)
    print(f"SmolLM2: |delta| {np.linalg.norm(ref):.3f}, relative error {rel(got, ref):.1e}")
    assert rel(got, ref) <= SMOLLM2_TOL and np.linalg.norm(ref) > 0.1


# --- batching, chunking, gradients --------------------------------------------------------------------

def mixed_loras(config):
    """Adapters that cannot be stacked as they are: other ranks and alphas, fewer modules, rsLoRA with
    per-layer ranks and alphas (PEFT's rank_pattern / alpha_pattern)."""
    cfgs = [LoRAConfig(4, 8.0), LoRAConfig(2, 3.0, target_modules=("q_proj", "v_proj", "down_proj")),
            LoRAConfig(4, 4.0, use_rslora=True, layer_ranks={"o_proj": (2, 5)}, layer_alphas={"up_proj": (1.0, 7.0)})]
    return [random_lora(config, c, i) for i, c in enumerate(cfgs)]


def test_stacked_chunked_and_base_hidden_agree(tiny):
    _, ours = tiny
    probes = random_probes(5, 16, 1000)
    loras = mixed_loras(ours.config)
    one_by_one = np.stack([delta.behavioural_delta(ours, l, probes) for l in loras])
    stacked = stack_any(loras)
    base = delta.probe_hidden(ours, probes)
    got = delta.behavioural_delta(ours, stacked, probes)
    assert got.shape == (3, ours.config.hidden_size)
    assert rel(got, one_by_one) <= BATCH_TOL and np.all(np.linalg.norm(one_by_one, axis=1) > 1e-2)
    np.testing.assert_array_equal(delta.behavioural_delta(ours, stacked, probes, base), got)
    # (chunked probes with a stack: test_gradient_matches_finite_differences)
    assert rel(delta.probe_hidden(ours, probes, delta_batch_probes=3), base) <= BATCH_TOL
    # Groups of probes run shortest first, each on the width its longest needs; the states come back in
    # the probes' order and equal one pass over the whole padded batch.
    long = random_probes(7, 64, 1000, seed=3)
    widths = [w for _, w in delta._probe_groups(long, 2)]
    assert widths == sorted(widths) and widths[0] < 64 == widths[-1]
    whole = delta.hidden_fn(ours.params, ours.config, stacked, jnp.asarray(long.ids), jnp.asarray(long.mask))
    assert rel(delta.probe_hidden(ours, long, stacked, delta_batch_probes=2), whole) <= BATCH_TOL
    with pytest.raises(ValueError, match=r"q_proj.*do not match"):
        delta.behavioural_delta(ours, random_lora(make_config(ours, 48), LoRAConfig(2, 2), 0), probes)


def make_config(model, hidden):
    return dataclasses.replace(model.config, hidden_size=hidden)


def test_gradient_matches_finite_differences(tiny):
    _, ours = tiny
    probes = random_probes(5, 16, 1000, seed=1)
    lora = stack_any(mixed_loras(ours.config)[:2])
    base = delta.probe_hidden(ours, probes)
    w = jnp.asarray(np.random.default_rng(9).normal(size=(2, ours.config.hidden_size)).astype(np.float32))

    def loss(l, params, chunk):  # as a training step calls it: params as arrays, inside its own jit
        return jnp.vdot(w, delta.delta_fn(params, ours.config, l, probes.ids, probes.mask, base,
                                          delta_batch_probes=chunk))

    # The gradient of the chunked form (2 probes a chunk: three chunks, the last one padded; lax.map with
    # remat), against central differences of the plain form.
    value, g = jax.jit(jax.value_and_grad(loss), static_argnums=2)(lora, ours.params, 2)
    plain = jax.jit(loss, static_argnums=2)
    f = lambda l: plain(l, ours.params, None)
    assert float(value) == pytest.approx(float(f(lora)), rel=BATCH_TOL)
    rng = np.random.default_rng(5)
    lora = jax.tree.map(np.asarray, lora)  # numpy arithmetic below: no eager jax op to compile
    direction = jax.tree.map(lambda x: (rng.normal(size=x.shape) * x.std()).astype(np.float32), lora)
    analytic = sum(float(np.vdot(np.asarray(a), d)) for a, d in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
    eps = 3e-3
    shifted = lambda s: jax.tree.map(lambda x, d: x + s * eps * d, lora, direction)
    numeric = float(f(shifted(1)) - f(shifted(-1))) / (2 * eps)
    print(f"directional derivative: analytic {analytic:.6f}, central differences {numeric:.6f}")
    assert abs(analytic - numeric) <= FD_TOL * abs(numeric) and abs(numeric) > 1e-2


# --- the cache ---------------------------------------------------------------------------------------

class Killed(BaseException):
    """Stands for the process dying (not an ``Exception``: nothing may catch it)."""


def entry_files(folder):
    return sorted(f for f in os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.fixture()
def tiny_zoo(tiny, tmp_path):
    """Three PEFT folders of one config (one compilation for all the cache tests)."""
    _, ours = tiny
    return [save_peft_adapter(random_lora(ours.config, LoRAConfig(4, 8.0), i), str(tmp_path / f"a{i}"))
            for i in range(3)]


def test_cache_computes_once_and_exactly_what_changed(tiny, tiny_zoo, tmp_path):
    _, ours = tiny
    probes = random_probes(5, 16, 1000)
    cache_dir = str(tmp_path / "cache")
    cache = delta.DeltaCache(cache_dir)
    first = cache.get_many(ours, probes, tiny_zoo, batch_size=2, show_progress=False)
    assert (cache.computed, cache.hits) == (3, 0) and first.shape == (3, ours.config.hidden_size)
    for i, f in enumerate(tiny_zoo):
        assert rel(first[i], delta.behavioural_delta(ours, load_peft_adapter(f), probes)) <= BATCH_TOL
    assert len(entry_files(cache_dir)) == 3

    again = delta.DeltaCache(cache_dir)
    np.testing.assert_array_equal(again.get_many(ours, probes, tiny_zoo, show_progress=False), first)
    assert (again.computed, again.hits) == (0, 3)
    np.testing.assert_array_equal(again.get(ours, probes, tiny_zoo[1]), first[1])

    # One probe changed: every entry is recomputed.
    ids = probes.ids.copy()
    ids[0, -1] += 1
    changed = probes_mod.probe_set(probes.texts, ids, probes.mask)
    c = delta.DeltaCache(cache_dir)
    out = c.get_many(ours, changed, tiny_zoo, batch_size=2, show_progress=False)
    assert c.computed == 3 and not np.array_equal(out, first)

    # One adapter file changed: only that one.
    lora = load_peft_adapter(tiny_zoo[2])
    save_peft_adapter(jax.tree.map(lambda x: np.asarray(x) * 1.5, lora), tiny_zoo[2])
    c = delta.DeltaCache(cache_dir)
    out = c.get_many(ours, probes, tiny_zoo, show_progress=False)
    assert (c.computed, c.hits) == (1, 2)
    np.testing.assert_array_equal(out[:2], first[:2])
    assert rel(out[2], first[2]) > 0.1

    # A perturbed copy of the base model: everything again.
    params = dict(ours.params, final_norm=jnp.asarray(np.asarray(ours.params["final_norm"]) * 1.001))
    other = BaseModel(ours.config, params, ours.tokenizer)
    assert model_hash(other) != model_hash(ours)
    c = delta.DeltaCache(cache_dir)
    c.get_many(ours, probes, tiny_zoo, show_progress=False)
    c.get_many(other, probes, tiny_zoo, batch_size=2, show_progress=False)
    assert (c.computed, c.hits) == (3, 3)


def test_cache_never_reads_partial_or_stale_entries(tiny, tiny_zoo, tmp_path, monkeypatch):
    _, ours = tiny
    probes = random_probes(5, 16, 1000)
    cache_dir = str(tmp_path / "cache")
    real_savez = np.savez

    def dies_midway(f, **arrays):  # half a file, then the process dies
        import io

        buf = io.BytesIO()
        real_savez(buf, **arrays)
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
        f.flush()
        raise Killed

    monkeypatch.setattr(np, "savez", dies_midway)
    with pytest.raises(Killed):
        delta.DeltaCache(cache_dir).get_many(ours, probes, tiny_zoo[:1], show_progress=False)
    assert entry_files(cache_dir) == []  # no entry and no temporary file left behind
    monkeypatch.setattr(np, "savez", real_savez)
    c = delta.DeltaCache(cache_dir)
    want = c.get_many(ours, probes, tiny_zoo[:2], show_progress=False)
    assert c.computed == 2

    # A truncated entry in place (a non-atomic copy, a full disk) and an entry under another key are
    # recomputed, not read.
    paths = [c.path(c.key(ours, probes, lora_hash(f))) for f in tiny_zoo[:2]]
    with open(paths[0], "rb") as f:
        entry0 = f.read()
    with open(paths[0], "wb") as f:
        f.write(entry0[:len(entry0) // 2])
    with open(paths[1], "wb") as f:  # a whole entry, but stored under entry 0's key
        f.write(entry0)
    c = delta.DeltaCache(cache_dir)
    with pytest.warns(CacheWarning) as caught:  # each one named, with why it is not read
        np.testing.assert_array_equal(c.get_many(ours, probes, tiny_zoo[:2], show_progress=False), want)
    assert (c.computed, c.hits) == (2, 0)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith(paths[0]) and "recomputing" in m for m in messages)
    assert any(m.startswith(paths[1]) and "stored key is another entry's" in m for m in messages)
    monkeypatch.setattr(delta, "DELTA_VERSION", delta.DELTA_VERSION + 1)  # a new definition of the delta
    c = delta.DeltaCache(cache_dir)
    c.get_many(ours, probes, tiny_zoo[:2], show_progress=False)
    assert (c.computed, c.hits) == (2, 0)


def test_cache_refuses_adapters_of_another_model(tiny, tmp_path):
    _, ours = tiny
    other = make_config(ours, 48)
    folder = save_peft_adapter(random_lora(other, LoRAConfig(2, 2), 0), str(tmp_path / "wrong"))
    with pytest.raises(ValueError, match=r"wrong.*adapter_model.safetensors.*shape"):
        delta.DeltaCache(str(tmp_path / "cache")).get_many(ours, random_probes(3, 16, 1000), [folder],
                                                            show_progress=False)


def test_hashes(tiny, tiny_zoo, monkeypatch):
    _, ours = tiny
    h = lora_hash(tiny_zoo[0])
    assert h == lora_hash(tiny_zoo[0]) and h != lora_hash(tiny_zoo[1])
    lora = load_peft_adapter(tiny_zoo[0])
    assert lora_hash(lora) == lora_hash(load_peft_adapter(tiny_zoo[0])) != h
    assert lora_hash(jax.tree.map(np.array, lora)) == lora_hash(lora)
    assert lora_hash(jax.tree.map(lambda x: np.asarray(x) * 2, lora)) != lora_hash(lora)
    known = model_hash(ours)
    calls = []
    import llgbm_jax.base.model as base_model_module

    monkeypatch.setattr(base_model_module, "hash_arrays", lambda *a: calls.append(1) or hash_arrays(*a))
    fresh = BaseModel(ours.config, ours.params, ours.tokenizer)
    assert model_hash(fresh) == model_hash(fresh) == model_hash(ours) == known
    assert len(calls) == 1  # once for the new object, memoised after
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter folder"):
        lora_hash(os.path.dirname(tiny_zoo[0]))


# --- probes -------------------------------------------------------------------------------------------

def test_probes_are_deterministic_hashed_and_bounded(tiny, monkeypatch):
    _, ours = tiny
    tok = ours.tokenizer
    probes = probes_mod.build_probes(ours, 13, 160, seed=0, data_dir=DATA_DIR)
    assert probes.sources.count("generic") == 6
    assert [probes.sources.count(t) for t in probes_mod.DEFAULT_PROBE_TASKS] == [2, 2, 2, 1]
    assert probes.ids.dtype == probes.mask.dtype == np.int32 and probes.ids.shape[1] % 16 == 0
    assert len(set(probes.texts)) == 13
    for text, ids, mask in zip(probes.texts, probes.ids, probes.mask):
        n = int(mask.sum())
        assert n <= 160 and mask[-n:].all() and not mask[:-n].any()  # left-padded, within the limit
        assert tok.decode(ids[-n:]) == text and text.startswith("<|im_start|>")
    same = probes_mod.build_probes(ours, 13, 160, seed=0, data_dir=DATA_DIR)
    assert same.hash == probes.hash and same.texts == probes.texts and np.array_equal(same.ids, probes.ids)
    assert probes_mod.build_probes(ours, 13, 160, seed=1, data_dir=DATA_DIR).hash != probes.hash
    # A tighter limit skips the long prompts and draws others.
    short = probes_mod.build_probes(ours, 13, 96, seed=0, data_dir=DATA_DIR)
    assert probes.mask.sum(1).max() > 96 >= short.mask.sum(1).max()
    assert len(short) == 13 and short.sources == probes.sources
    # Any change to a probe, its tokens or the version changes the hash.
    texts = list(probes.texts)
    texts[3] += " "
    assert probes_mod.probe_set(texts, probes.ids, probes.mask).hash != probes.hash
    ids = probes.ids.copy()
    ids[2, -2] += 1
    assert probes_mod.probe_set(probes.texts, ids, probes.mask).hash != probes.hash
    assert probes_mod.probe_set(probes.texts, probes.ids, probes.mask).hash == probes.hash
    monkeypatch.setattr(probes_mod, "PROBE_VERSION", probes_mod.PROBE_VERSION + 1)
    assert probes_mod.probe_set(probes.texts, probes.ids, probes.mask).hash != probes.hash


def test_probes_never_contain_eval_questions(tiny):
    _, ours = tiny
    probes = probes_mod.build_probes(ours, 40, 128, seed=3, data_dir=DATA_DIR)
    assert probes.sources.count("generic") == 20
    for name in probes_mod.DEFAULT_PROBE_TASKS:
        task = get_task(name)
        texts = [t for t, s in zip(probes.texts, probes.sources) if s == name]
        train = {task.format_prompt(r, ours) for r in task.load("train", DATA_DIR)}
        assert len(texts) == 5 and set(texts) <= train
        for r in task.load("eval", DATA_DIR):
            assert not any(r["prompt"] in t for t in texts), (name, r["prompt"])


def test_probe_errors(tiny):
    _, ours = tiny
    with pytest.raises(ValueError, match="'no_such_task' is not registered"):
        probes_mod.build_probes(ours, 8, 64, 0, tasks=("boolq", "no_such_task"), data_dir=DATA_DIR)
    with pytest.raises(ValueError, match="fit in max_probe_length=5"):
        probes_mod.build_probes(ours, 8, 5, 0, data_dir=DATA_DIR)


# --- experiments/deltas.py ----------------------------------------------------------------------------

def test_deltas_experiment_on_a_tiny_zoo(tiny, tmp_path):
    """Two tasks of three adapters, each adapter its task's direction plus noise: the saved matrix and
    norms equal a direct computation from the cached deltas, and the script says which tasks separate."""
    _, ours = tiny
    model_dir = str(tmp_path / "model")
    save_checkpoint(model_dir, ours.config, ours.params, ours.tokenizer)
    zoo = tmp_path / "zoo"
    entries = []
    cfg = LoRAConfig(4, 8.0)
    for t, task in enumerate(("arc_e_cloze", "gsm8k")):
        centre = random_lora(ours.config, cfg, 100 + t)
        for run in range(3):
            noise = random_lora(ours.config, cfg, 10 * t + run)
            lora = jax.tree.map(lambda c, n: np.asarray(c) + 0.3 * np.asarray(n), centre, noise)
            path = f"{task}/run{run}/step_00010"
            save_peft_adapter(lora, str(zoo / path))
            entries.append({"task": task, "run": f"run{run}", "step": 10, "path": path})
    with open(zoo / "manifest.json", "w") as f:
        json.dump({"model": model_dir, "adapters": entries}, f)

    main = lambda argv: run_cli(["deltas", *argv])
    argv = ["--zoo-dir", str(zoo), "--num-probes", "6", "--max-probe-length", "96", "--data-dir", DATA_DIR,
            "--batch-size", "4", "--no-progress"]
    result = main(argv)
    saved = json.loads((zoo / "deltas.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert (zoo / "deltas_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["computed"] == 6 and saved["cached"] == 0 and saved["tasks"] == ["arc_e_cloze", "gsm8k"]

    # Independent computation from the cache (nothing recomputed).
    base = load_base_model(model_dir)
    probes = probes_mod.build_probes(base, 6, 96, 0, data_dir=DATA_DIR)
    assert probes.hash == saved["probes"]["hash"]
    cache = delta.DeltaCache(str(zoo / "deltas"))
    d = cache.get_many(base, probes, [str(zoo / e["path"]) for e in entries], show_progress=False)
    assert cache.computed == 0
    unit = d / np.linalg.norm(d, axis=1, keepdims=True)
    groups = {"arc_e_cloze": [0, 1, 2], "gsm8k": [3, 4, 5]}
    for i, a in enumerate(saved["tasks"]):
        for j, b in enumerate(saved["tasks"]):
            pairs = [(x, y) for x in groups[a] for y in groups[b] if x != y]
            if a == b:
                pairs = [(x, y) for x, y in pairs if x < y]
            want = np.mean([unit[x] @ unit[y] for x, y in pairs])
            assert saved["cosine"][i][j] == pytest.approx(want, abs=1e-6)
        norms = np.linalg.norm(d[groups[a]], axis=1)
        assert saved["norms"][a]["mean"] == pytest.approx(norms.mean(), rel=1e-6)
        assert saved["norms"][a]["sd"] == pytest.approx(norms.std(ddof=1), rel=1e-5)
        others = [saved["cosine"][i][j] for j in range(2) if j != i]
        assert saved["within_highest"][a] == (saved["cosine"][i][i] > max(others))
    assert all(saved["within_highest"].values())  # built to separate
    assert any("HIGHER" in v for v in saved["verdicts"])

    again = main(argv + ["--out", str(tmp_path / "out")])
    assert again["computed"] == 0 and again["cached"] == 6 and again["cosine"] == saved["cosine"]
    assert os.path.isfile(tmp_path / "out" / "deltas.json")
