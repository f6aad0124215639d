r"""Opt-in oneDNN matrix multiplies for XLA:CPU.

XLA:CPU's own float32 GEMM runs SmolLM2's projections at 0.7-0.9x the rate of PyTorch's MKL kernels
on a 2-core AVX-512 machine (`benchmarks/gemm.py`). XLA can hand every dot to oneDNN instead; this
is an experimental XLA feature, so it is off by default. Turn it on for a whole process with

    export XLA_FLAGS="--xla_cpu_use_onednn=true \
        --xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"

or for one function with ``jax.jit(f).lower(*args).compile(compiler_options=ONEDNN_OPTIONS)``.
Only the *individual dot* fusion type: ``LIBRARY_FUSION_TYPE_DOT`` (chains of dots in one oneDNN
graph) killed the process with an illegal instruction on jax 0.10.2 for ``(x @ Aᵀ) @ Bᵀ``.
On GPU and TPU these options do nothing and are not needed.
"""

from __future__ import annotations

ONEDNN_OPTIONS = {"xla_cpu_use_onednn": True,
                  "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compile_with_onednn(fn, *args):
    """``fn`` jitted and compiled for ``args`` with oneDNN dots (a `jax.stages.Compiled`)."""
    import jax

    return jax.jit(fn).lower(*args).compile(compiler_options=ONEDNN_OPTIONS)
