"""``llgbm-jax``: the command line. Each subcommand parses its arguments and calls one library function.

    llgbm-jax train                                  # the main job on the embedded default
    llgbm-jax generate --generator runs/delta_w/generator --prompt "Add 3 to the number." --out my_adapter
    llgbm-jax chat --adapter my_adapter "Add 3 to this number: 41"
    llgbm-jax evaluate --adapter my_adapter --task fam_add_2 --max-samples 64

``llgbm-jax <command> --help`` says what a command does and shows an example.
"""

from __future__ import annotations

import argparse
import os
import sys

from llgbm_jax.cli import commands, studies

# name -> (module, one-line help, one example); the module defines add_<name>(parser) and run_<name>(args).
COMMANDS = {
    "train": (commands, "the main job: build the teacher zoo, train a generator on it, judge its adapters",
              "llgbm-jax train --seed 1 --output-dir runs/seed1"),
    "generate": (commands, "write an adapter from text (a task description or example prompts) as a PEFT folder",
                 'llgbm-jax generate --generator runs/delta_w/generator --prompt "Add 3 to the number." '
                 '--out my_adapter'),
    "chat": (commands, "greedy generation from the base model, with or without an adapter",
             'llgbm-jax chat --adapter my_adapter "Add 3 to this number: 41"'),
    "evaluate": (commands, "an adapter's accuracy on a task's held-out questions, beside the base model's",
                 "llgbm-jax evaluate --adapter my_adapter --task fam_add_2 --max-samples 64"),
    "zoo": (commands, "train the teacher LoRAs of a preset into a zoo (resumable)",
            "llgbm-jax zoo --preset cpu --zoo-dir zoo"),
    "convert": (commands, "convert base models and adapters between formats",
                "llgbm-jax convert peft-to-jax my_adapter my_adapter.safetensors"),
    "verify": (commands, "check that our adapters load in PEFT and act there as they do here",
               "llgbm-jax verify generated --run-dir runs/delta_w --n 100"),
    "base-accuracy": (studies, "the base model's accuracy per task beside the majority class",
                      "llgbm-jax base-accuracy --tasks arc_e boolq --max-samples 100"),
    "deltas": (studies, "behavioural deltas of a zoo's adapters and whether they tell the tasks apart",
               "llgbm-jax deltas --zoo-dir zoo"),
    "family": (studies, "a teacher per task of the generated family, beside the mean of the teachers",
               "llgbm-jax family --zoo-dir zoo_family --tasks fam_add_2 fam_word_2"),
    "unseen": (studies, "adapters for family tasks the generator never saw, beside the baselines a skeptic tries first",
               "llgbm-jax unseen --run-dir runs/unseen --zoo-dir runs/zoo_family"),
    "ablations": (studies, "what supervision (raw factors, ΔW, behaviour, end to end) teaches a generator",
                  "llgbm-jax ablations --run-dir runs/ablations --study-dir runs/unseen --modes delta_w weight_only"),
    "pilot": (studies, "one teacher run scored at several checkpoints",
              "llgbm-jax pilot --task arc_e_cloze --steps 80 --lr 5e-4 --save-every 40"),
    "prepare-data": (studies, "build the task data folder from the public data sets (needs a network)",
                     "llgbm-jax prepare-data --out data"),
}


class UsageError(Exception):
    """Bad input the user can fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llgbm-jax", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="command")
    for name, (module, help_, example) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                           epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
        getattr(module, "add_" + name.replace("-", "_"))(p)
    return ap


# What a user can fix gets a one-line message naming the file, key or value; anything else keeps its traceback.
EXPECTED = (UsageError, ValueError, FileNotFoundError, FileExistsError, KeyError, NotADirectoryError)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (0: success, 1: a check failed, 2: bad input)."""
    from llgbm_jax.teachers.run import StaleRunError
    from llgbm_jax.utils.lock import RunLocked

    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help()
        return 2
    module = COMMANDS[args.command][0]
    try:
        status = getattr(module, "run_" + args.command.replace("-", "_"))(args)
    except (RunLocked, StaleRunError) + EXPECTED as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"llgbm-jax {args.command}: error: {message}", file=sys.stderr)
        return 2
    if isinstance(status, dict) and status.get("ok") is False:  # a check that failed (verify)
        return 1
    return status if isinstance(status, int) else 0


def offline_unless_hub(*names: str | None) -> None:
    """Keep transformers and huggingface_hub off the network (HF_HUB_OFFLINE=1) unless a name asks for the hub."""
    from llgbm_jax.base.model import looks_like_hub_id

    if not any(n and looks_like_hub_id(n) for n in names):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def entry_point() -> None:  # the console script
    sys.exit(main())
