"""Behavioural deltas of a whole zoo: ours batched against PEFT one adapter at a time; one process.

    python benchmarks/deltas.py --zoo-dir zoo [--num-probes 32 --max-probe-length 128 --batch-size 8]
    python benchmarks/deltas.py --tiny          # tiny random Llama, a few random adapters, random probes

Ours: every adapter loaded (`load_peft_adapter`), stacked ``--batch-size`` at a time and run as one
`behavioural_delta` call (vmapped over adapters), base hidden states once. PEFT, as the research code
does it: ``PeftModel.from_pretrained`` per adapter on transformers' model of the same base, the probes in
one left-padded batch (positions from the mask), hidden state after the final norm at the last real
token minus the base model's. Both sides load their adapters inside the timed pass. Prints the time
of one pass over the zoo for each (round-robin, after a warm-up on the first batch of adapters, which
compiles ours), the ratio and the largest relative difference ‖ours − PEFT‖ / ‖PEFT‖ over adapters;
``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings

from llgbm_jax.benchmarks.common import interleaved_medians, parse_args, save_result
from llgbm_jax.teachers.manifest import read_manifest


def tiny_setup(folder: str, num_adapters: int = 3, num_probes: int = 6):
    """A tiny random Llama saved in ``folder``, random adapters of different ranks as a zoo there, and
    random left-padded probes. Returns ``(ours, torch_model, zoo_dir, probes)``."""
    import jax
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llgbm_jax.base.model import load_base_model
    from llgbm_jax.conditions.probes import probe_set
    from llgbm_jax.lora.adapter import LoRAConfig, init_lora
    from llgbm_jax.lora.peft import save_peft_adapter
    from llgbm_jax.utils.io import write_json_atomic

    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                                       pad_token_id=0)).eval()
    model_dir = os.path.join(folder, "model")
    ref.save_pretrained(model_dir)
    ours = load_base_model(model_dir)
    zoo_dir, entries = os.path.join(folder, "zoo"), []
    for i in range(num_adapters):
        lora = init_lora(jax.random.PRNGKey(i), ours.config, LoRAConfig(2 + 2 * i, 8.0), random_b=True, b_std=0.1)
        path = f"task{i % 2}/run0/step_{i:05d}"
        save_peft_adapter(lora, os.path.join(zoo_dir, path), model_dir)
        entries.append({"task": f"task{i % 2}", "run": "run0", "step": i, "path": path})
    write_json_atomic(os.path.join(zoo_dir, "manifest.json"), {"model": model_dir, "adapters": entries})
    rng = np.random.RandomState(0)
    lengths = rng.randint(3, 17, num_probes)
    ids, mask = np.zeros((num_probes, 16), np.int32), np.zeros((num_probes, 16), np.int32)
    for i, n in enumerate(lengths):
        ids[i, 16 - n:], mask[i, 16 - n:] = rng.randint(3, 160, n), 1
    return ours, ref, zoo_dir, probe_set([f"random probe {i}" for i in range(num_probes)], ids, mask)


def peft_deltas(torch_model, folders, ids, mask):
    """Deltas ``[N, H]`` the PEFT way: one PeftModel per adapter (wrapped in place, then unloaded)."""
    import numpy as np
    import torch
    from peft import PeftModel

    ids_t, mask_t = (torch.as_tensor(np.array(x), dtype=torch.long) for x in (ids, mask))  # writable copies
    pos = torch.as_tensor(np.maximum(np.cumsum(mask, -1) - 1, 0), dtype=torch.long)
    last = torch.as_tensor(np.where(mask > 0, np.arange(ids.shape[1]), 0).max(-1), dtype=torch.long)
    rows = torch.arange(ids.shape[0])

    def hidden(model):
        with torch.inference_mode():
            h = model(input_ids=ids_t, attention_mask=mask_t, position_ids=pos,
                      output_hidden_states=True).hidden_states[-1]
        return h[rows, last].float()

    base = hidden(torch_model)
    out = []
    for folder in folders:
        with warnings.catch_warnings():  # transformers' deprecation notices inside PEFT's loader
            warnings.simplefilter("ignore", FutureWarning)
            pm = PeftModel.from_pretrained(torch_model, folder).eval()
        out.append((hidden(pm) - base).mean(0).numpy())
        pm.unload()  # back to the plain model, LoRA layers removed without merging
    return np.stack(out)


def ours_deltas(base_model, folders, probes, batch_size):
    import numpy as np

    from llgbm_jax.conditions.deltas import batched_deltas

    return np.concatenate([d for _, d in batched_deltas(base_model, probes, folders, batch_size=batch_size)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo-dir", help="zoo folder with manifest.json (its 'model' is the base model)")
    ap.add_argument("--tiny", action="store_true", help="tiny random model and adapters (no zoo needed)")
    ap.add_argument("--num-probes", type=int, default=32)
    ap.add_argument("--max-probe-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8, help="adapters per batched call (ours)")
    ap.add_argument("--data-dir", help="task data folder for the probes (default: $LLGBM_DATA_DIR)")
    args, n_threads = parse_args(ap, argv, repeats=1)
    if not args.tiny and not args.zoo_dir:
        ap.error("give --zoo-dir or --tiny")
    import jax
    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            ours, ref, zoo_dir, probes = tiny_setup(tmp)
        else:
            from llgbm_jax.base.model import DEFAULT_MODEL, load_base_model
            from llgbm_jax.conditions.probes import build_probes, default_probe_tasks
            from llgbm_jax.evaluation.reference import torch_model

            zoo_dir = args.zoo_dir
            model_name = read_manifest(zoo_dir, required=True).get("model") or DEFAULT_MODEL
            ours, ref = load_base_model(model_name), torch_model(model_name)
            probes = build_probes(ours, args.num_probes, args.max_probe_length, args.seed,
                                  default_probe_tasks(args.data_dir), data_dir=args.data_dir)
        folders = [os.path.join(zoo_dir, e["path"]) for e in read_manifest(zoo_dir, required=True)["adapters"]]
        print(f"threads: {n_threads} | jax {jax.__version__} | torch {torch.__version__} | {len(folders)} adapters, "
              f"{len(probes)} probes x {probes.ids.shape[1]} tokens (left-padded), ours in batches of "
              f"{min(args.batch_size, len(folders))} | float32")
        # Warm-up on the first batch of adapters (compiles ours, first PEFT load), then whole timed passes.
        ours_deltas(ours, folders[:args.batch_size], probes, args.batch_size)
        peft_deltas(ref, folders[:1], probes.ids, probes.mask)
        got = {}
        run = {"ours_batched": lambda: got.__setitem__("ours", ours_deltas(ours, folders, probes, args.batch_size)),
               "peft_one_by_one": lambda: got.__setitem__("peft", peft_deltas(ref, folders, probes.ids, probes.mask))}
        t = interleaved_medians(run, args.repeats, warmup=0)
    rel = np.linalg.norm(got["ours"] - got["peft"], axis=1) / np.linalg.norm(got["peft"], axis=1)
    ratio = t["peft_one_by_one"] / t["ours_batched"]
    print(f"  ours, batched:        {t['ours_batched']:8.3f} s for the zoo "
          f"({t['ours_batched'] / len(folders) * 1e3:.1f} ms/adapter)")
    print(f"  PEFT, one at a time:  {t['peft_one_by_one']:8.3f} s for the zoo "
          f"({t['peft_one_by_one'] / len(folders) * 1e3:.1f} ms/adapter)")
    print(f"speed ours / PEFT: {ratio:.2f}x; max relative difference |ours - PEFT| / |PEFT| over adapters "
          f"{rel.max():.2e}")
    result = dict(threads=n_threads, tiny=args.tiny, zoo_dir=None if args.tiny else zoo_dir, num_adapters=len(folders),
                  num_probes=len(probes), probe_tokens=int(probes.ids.shape[1]), probe_hash=probes.hash,
                  batch_size=min(args.batch_size, len(folders)), times_s=t, ours_over_peft_speed=ratio,
                  max_rel_diff=float(rel.max()), rel_diff=rel.tolist())
    return save_result(args, result)
