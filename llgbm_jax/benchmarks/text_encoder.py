"""Sentence embedding throughput: our nnx all-MiniLM-L6-v2 against sentence-transformers; one process.

    python benchmarks/text_encoder.py [--n 256 --batch-size 64 --repeats 5] [--threads N] [--out F.json]

Both encode the same ``--n`` prompts of the tasks' train splits (an equal share of ARC-e, BoolQ, OBQA and
GSM8K, seed 0; ``$LLGBM_DATA_DIR``) from the embedded folder, tokenization included, timed round-robin
after warm-up (ours: every bucket compiled). Prints texts per second, ours / sentence-transformers, and the
largest deviation of the cosine between the two embeddings of a text from 1.
"""

from __future__ import annotations

import argparse

from llgbm_jax.benchmarks.common import interleaved_medians, parse_args, save_result

TASKS = ("arc_e", "boolq", "obqa", "gsm8k")


def prompts(n: int, data_dir: str | None = None) -> list[str]:
    import numpy as np

    from llgbm_jax.tasks.registry import get_task

    rng, out = np.random.RandomState(0), []
    for i, name in enumerate(TASKS):
        texts = [r["prompt"] for r in get_task(name).load("train", data_dir)]
        k = n // len(TASKS) + (i < n % len(TASKS))
        out += [texts[j] for j in rng.choice(len(texts), k, replace=False)]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="prompts encoded per call")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data-dir", default=None)
    args, n_threads = parse_args(ap, argv, repeats=5)
    import jax
    import numpy as np
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    from llgbm_jax.conditions.text_encoder import load_text_encoder

    ours = load_text_encoder()
    ref = SentenceTransformer(ours.layout.root, device="cpu")
    texts = prompts(args.n, args.data_dir)
    tokens = int(ours.tokenize(texts)[1].sum())
    print(f"threads: {n_threads} | jax {jax.__version__} | sentence-transformers {sentence_transformers.__version__} | "
          f"{len(texts)} prompts, {tokens} tokens, batch {args.batch_size}, float32")
    a = ours.encode(texts, args.batch_size)
    b = ref.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
    cos = (a.astype(np.float64) * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b.astype(np.float64), axis=1))
    dev = float(np.abs(1 - cos).max())
    t = interleaved_medians({"ours": lambda: ours.encode(texts, args.batch_size),
                             "sentence_transformers": lambda: ref.encode(texts, batch_size=args.batch_size)},
                            args.repeats, warmup=1)
    rate = {k: len(texts) / v for k, v in t.items()}
    ratio = rate["ours"] / rate["sentence_transformers"]
    print(f"  ours {rate['ours']:7.1f} texts/s ({1e3 * t['ours']:.0f} ms) | sentence-transformers "
          f"{rate['sentence_transformers']:7.1f} texts/s ({1e3 * t['sentence_transformers']:.0f} ms) | "
          f"ours / sentence-transformers {ratio:.2f}x | max |1 - cosine| {dev:.1e}")
    return save_result(args, {"threads": n_threads, "n": len(texts), "tokens": tokens, "batch_size": args.batch_size,
                              "seconds": t, "texts_per_s": rate, "ratio": ratio, "max_cosine_deviation": dev})
