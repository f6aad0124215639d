"""Helpers shared by every stage: atomic files and content keys (`io`), the orbax training state
(`checkpointing`), the optax set-up (`optim`), compilation counting (`compile_stats`) and run locks (`lock`)."""
