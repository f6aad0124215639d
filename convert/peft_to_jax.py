"""Convert a PEFT LoRA adapter folder into an llgbm_jax LoRA file (stacked factors, one .safetensors).

    python convert/peft_to_jax.py ADAPTER_FOLDER OUT.safetensors [--model smollm2-135m-instruct]

The logic is `llgbm_jax.peft_io.load_peft_adapter` and `llgbm_jax.lora.save_lora`.
"""

from __future__ import annotations

import argparse


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapter", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors/.bin)")
    ap.add_argument("out", help="output file (.safetensors) for llgbm_jax.lora.load_lora")
    ap.add_argument("--model", default=None,
                    help="base model (embedded name, .gguf, HF folder) to check layer count and shapes against")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="convert the factors (default: as stored)")
    args = ap.parse_args(argv)

    from llgbm_jax.lora import save_lora
    from llgbm_jax.peft_io import load_peft_adapter

    model_config = None
    if args.model:
        from llgbm_jax.models import load_base_model

        model_config = load_base_model(args.model).config
    lora = load_peft_adapter(args.adapter, model_config, dtype=args.dtype)
    save_lora(lora, args.out)
    print(f"wrote {args.out}: modules {list(lora.modules)}, {lora.num_layers} layers, rank {lora.config.rank} "
          f"(max {lora.config.max_rank}), alpha {lora.config.alpha}, rsLoRA {lora.config.use_rslora}, "
          f"{lora.num_params()} parameters")


if __name__ == "__main__":
    main()
