"""Export an llgbm_jax LoRA file (e.g. a generated adapter) as a PEFT adapter folder.

    python convert/export_peft.py LORA.safetensors OUT_FOLDER --base-model HuggingFaceTB/SmolLM2-135M-Instruct

The folder loads with ``PeftModel.from_pretrained(base, OUT_FOLDER)``. For a file holding a batch of
adapters, ``--index i`` picks one. The logic is `llgbm_jax.peft_io.save_peft_adapter`.
"""

from __future__ import annotations

import argparse


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lora", help="llgbm_jax LoRA file written by llgbm_jax.lora.save_lora")
    ap.add_argument("out", help="output PEFT adapter folder (replaced atomically if it exists)")
    ap.add_argument("--base-model", default=None, help="base_model_name_or_path to record in adapter_config.json")
    ap.add_argument("--index", type=int, default=None, help="adapter to export from a batch file")
    ap.add_argument("--model", default=None, help="base model to check the adapter's shapes against")
    args = ap.parse_args(argv)

    import jax

    from llgbm_jax.lora import load_lora
    from llgbm_jax.peft_io import save_peft_adapter

    lora = load_lora(args.lora)
    if args.index is not None:
        if lora.batch_shape == ():
            raise SystemExit(f"{args.lora} holds one adapter; drop --index")
        lora = jax.tree_util.tree_map(lambda x: x[args.index], lora)
    model_config = None
    if args.model:
        from llgbm_jax.models import load_base_model

        model_config = load_base_model(args.model).config
    save_peft_adapter(lora, args.out, args.base_model, model_config=model_config)
    print(f"wrote {args.out}: modules {list(lora.modules)}, {lora.num_layers} layers, rank {lora.config.rank}")


if __name__ == "__main__":
    main()
