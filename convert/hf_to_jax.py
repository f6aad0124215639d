"""Convert a base model (Hugging Face folder or hub id, .gguf file, embedded name) into an llgbm_jax
checkpoint, which `load_base_model(out)` then loads with no dequantization or restacking.

    python convert/hf_to_jax.py smollm2-135m-instruct --out checkpoints/smollm2
    python convert/hf_to_jax.py path/to/hf_folder --dtype bfloat16 --out checkpoints/model
"""

from __future__ import annotations

import argparse
import time

from llgbm_jax.models.base_model import DEFAULT_MODEL, DTYPES, load_base_model
from llgbm_jax.models.checkpoint import save_checkpoint


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name_or_path", nargs="?", default=DEFAULT_MODEL,
                    help=f"anything load_base_model accepts (default: {DEFAULT_MODEL})")
    ap.add_argument("--out", required=True, help="checkpoint folder to write (replaced atomically)")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES), help="parameter dtype to store")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = load_base_model(args.name_or_path, args.dtype, cache=False)
    t_source = time.perf_counter() - t0
    save_checkpoint(args.out, model.config, model.params, model.tokenizer, source=args.name_or_path)
    t0 = time.perf_counter()
    load_base_model(args.out, args.dtype)
    t_ckpt = time.perf_counter() - t0
    print(f"wrote {args.out} ({model.config.model_type}, {model.config.num_layers} layers, {args.dtype})")
    print(f"load source: {t_source:.2f} s; load checkpoint: {t_ckpt:.2f} s")


if __name__ == "__main__":
    main()
