"""Our jitted forward and greedy generation vs transformers' PyTorch, SmolLM2-135M, one process.

    python benchmarks/forward.py [--batch 4 --seq 128 --gen-batch 8 --new-tokens 64]

Prints seconds per call, tokens/s and the speed ratio ours/transformers (>1 means we are faster).
Targets: forward >= 1.5x, generation >= 2x.
"""

from __future__ import annotations

import argparse

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from llgbm_jax.base import decoder
from llgbm_jax.benchmarks.common import load_smollm2_pair, median_time, parse_args, save_result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--gen-batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    args, n_threads = parse_args(ap, argv, repeats=5)
    ours, ref = load_smollm2_pair()
    print(f"threads: {n_threads} (both frameworks) | jax {jax.__version__} "
          f"| torch {torch.__version__}")

    rng = np.random.RandomState(0)
    ids = rng.randint(10, ours.config.vocab_size, (args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    ids_j, mask_j = jax.device_put(ids), jax.device_put(mask)
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

    def run_ours():
        ours.logits(ids_j, mask_j).block_until_ready()

    def run_ref():
        with torch.inference_mode():
            ref(input_ids=ids_t, attention_mask=mask_t).logits

    t_ours = median_time(run_ours, args.repeats)
    t_ref = median_time(run_ref, args.repeats)
    tokens = args.batch * args.seq
    print(f"forward  {args.batch}x{args.seq}: ours {t_ours * 1e3:7.1f} ms ({tokens / t_ours:7.0f} tok/s) | "
          f"transformers {t_ref * 1e3:7.1f} ms ({tokens / t_ref:7.0f} tok/s) | speed ratio {t_ref / t_ours:.2f}x")

    # Greedy generation: real chat prompts, left padded; EOS disabled on both sides so both produce
    # exactly new_tokens tokens per row.
    prompts = [ours.chat_prompt(f"Tell me a fact about the number {i}.") for i in range(args.gen_batch)]
    gids, gmask = ours.encode(prompts, pad_to_multiple_of=None)
    gids_t, gmask_t = torch.tensor(gids, dtype=torch.long), torch.tensor(gmask)

    def gen_ours():
        decoder.generate(ours.params, ours.config, gids, gmask, max_new_tokens=args.new_tokens, eos_ids=(-1,),
                         pad_id=ours.pad_token_id).block_until_ready()

    def gen_ref():
        with torch.inference_mode():
            ref.generate(input_ids=gids_t, attention_mask=gmask_t, max_new_tokens=args.new_tokens,
                         min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=ours.pad_token_id)

    g_ours = median_time(gen_ours, max(args.repeats // 2, 2), warmup=1)
    g_ref = median_time(gen_ref, max(args.repeats // 2, 2), warmup=1)
    new = args.gen_batch * args.new_tokens
    print(f"generate {args.gen_batch}x{args.new_tokens} new (prompt {gids.shape[1]}): ours {new / g_ours:7.1f} tok/s | "
          f"transformers {new / g_ref:7.1f} tok/s | speed ratio {g_ref / g_ours:.2f}x")
    result = dict(threads=n_threads, forward_ms_ours=t_ours * 1e3, forward_ms_ref=t_ref * 1e3,
                  forward_ratio=t_ref / t_ours, gen_tok_s_ours=new / g_ours, gen_tok_s_ref=new / g_ref,
                  gen_ratio=g_ref / g_ours)
    return save_result(args, result)
