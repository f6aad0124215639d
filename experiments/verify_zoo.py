"""Check that zoo adapters load in PEFT and act as they do in llgbm_jax.

    python experiments/verify_zoo.py --zoo-dir zoo [--sample 8] [--tol 1e-3]

For a seeded sample of the manifest's adapters (every adapter with ``--sample 0``): load the folder
with ``PeftModel.from_pretrained`` on transformers' model of the same base (any PEFT warning, missing
or unexpected key is a failure), run two of the adapter's own training prompts, and compare the
logits with ours (`load_peft_adapter` + our decoder). Prints one line per adapter, writes
``<zoo-dir>/verify.json`` and exits with status 1 if any adapter fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def verify_adapters(zoo_dir: str, entries, base_model, torch_model, tol: float, prompts_per_adapter: int = 2):
    """One result dict per manifest entry: ``ok``, ``max_abs_logit_diff`` or ``error``."""
    import numpy as np
    import torch

    from llgbm_jax.peft_io import load_peft_adapter
    from llgbm_jax.reference import load_peft_strict

    results = []
    for entry in entries:
        folder = os.path.join(zoo_dir, entry["path"])
        out = {"path": entry["path"], "task": entry["task"], "step": entry["step"]}
        try:
            with open(os.path.join(zoo_dir, entry["prompts"])) as f:
                prompts = json.load(f)[:prompts_per_adapter]
            ids, mask = base_model.encode([base_model.chat_prompt(p) for p in prompts])
            ours = np.asarray(base_model.logits(ids, mask, load_peft_adapter(folder)))
            peft_model = load_peft_strict(torch_model, folder)
            with torch.inference_mode():
                ref = peft_model(input_ids=torch.tensor(ids, dtype=torch.long),
                                 attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
            diff = float(np.abs(ours - ref)[mask.astype(bool)].max())
            out.update(ok=diff <= tol, max_abs_logit_diff=diff)
        except Exception as e:  # report every adapter, then fail
            out.update(ok=False, error=f"{type(e).__name__}: {e}")
        results.append(out)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo-dir", default="zoo")
    ap.add_argument("--sample", type=int, default=8, help="adapters to check (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-3, help="max |logit difference| allowed (float32)")
    args = ap.parse_args(argv)
    import numpy as np

    from llgbm_jax.io_utils import write_json_atomic
    from llgbm_jax.models import load_base_model
    from llgbm_jax.reference import torch_model

    with open(os.path.join(args.zoo_dir, "manifest.json")) as f:
        manifest = json.load(f)
    entries = manifest["adapters"]
    if args.sample and args.sample < len(entries):
        pick = np.random.default_rng(args.seed).choice(len(entries), args.sample, replace=False)
        entries = [entries[i] for i in sorted(pick)]
    results = verify_adapters(args.zoo_dir, entries, load_base_model(manifest["model"]),
                              torch_model(manifest["model"]), args.tol)
    for r in results:
        detail = f"max |logit diff| {r['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in r else r["error"]
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['path']}: {detail}")
    failed = sum(not r["ok"] for r in results)
    print(f"{len(results) - failed}/{len(results)} adapters load in PEFT and match ours within {args.tol:g}")
    write_json_atomic(os.path.join(args.zoo_dir, "verify.json"), {"tol": args.tol, "results": results})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
