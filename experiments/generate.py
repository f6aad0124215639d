"""Greedy chat generation with the embedded SmolLM2-135M-Instruct (or any model `load_base_model` takes).

    python experiments/generate.py --prompt "What is the capital of France?" --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import time

from llgbm_jax.models import DEFAULT_MODEL, load_base_model

DEFAULT_PROMPTS = [
    "What is 12 times 7?",
    "Name three primary colors.",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "Write one sentence about the ocean.",
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, .gguf file, HF folder or hub id")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--prompt", action="append", help="user message (repeatable)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = load_base_model(args.model, dtype=args.dtype)
    print(f"loaded {args.model} ({model.config.num_layers} layers, {args.dtype}) in {time.perf_counter() - t0:.1f}s")
    prompts = args.prompt or DEFAULT_PROMPTS
    ids, mask = model.encode([model.chat_prompt(p) for p in prompts])
    t0 = time.perf_counter()
    out = model.generate(ids, mask, args.max_new_tokens).block_until_ready()
    dt = time.perf_counter() - t0
    for p, answer in zip(prompts, model.decode(out)):
        print(f"\n> {p}\n{answer}")
    print(f"\n{len(prompts)} prompts x {args.max_new_tokens} new tokens in {dt:.1f}s (including compilation)")


if __name__ == "__main__":
    main()
