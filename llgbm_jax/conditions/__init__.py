"""What a generator is conditioned on and measured by: the text encoder (`text_encoder`), the probe prompts
(`probes`) and the behavioural deltas of adapters on them (`deltas`), each with a content-addressed cache."""

from llgbm_jax.conditions.deltas import DeltaCache, behavioural_delta, delta_fn, probe_hidden
from llgbm_jax.conditions.probes import ProbeSet, build_probes
from llgbm_jax.conditions.text_encoder import EmbeddingCache, TextEncoder, load_text_encoder

__all__ = ["DeltaCache", "EmbeddingCache", "ProbeSet", "TextEncoder", "behavioural_delta", "build_probes",
           "delta_fn", "load_text_encoder", "probe_hidden"]
