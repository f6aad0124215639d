"""The layout shows the pipeline: a stage imports only the stages before it (module-level and lazy imports alike,
so there is no import cycle between subpackages), and scripts and tests call the library, never a script."""

from __future__ import annotations

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The pipeline's order (docs/design.md); `utils` serves every stage.
STAGES = ("utils", "lora", "base", "tasks", "scoring", "teachers", "conditions", "generator", "ablations",
          "evaluation", "cli", "benchmarks")


def python_files(*folders):
    for folder in folders:
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            yield from (os.path.join(dirpath, f) for f in files if f.endswith(".py"))


def imported_modules(path):
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield from ([f"{node.module}.{a.name}" for a in node.names] if node.module == "llgbm_jax"
                        else [node.module])
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "llgbm_jax" and len(parts) > 1 and parts[1] in STAGES else None


def test_every_stage_imports_only_earlier_stages():
    backwards = []
    for path in python_files("llgbm_jax"):
        rel = os.path.relpath(path, ROOT)
        me = stage_of(rel[:-3].replace(os.sep, "."))
        if me is None:
            continue
        for module in imported_modules(path):
            other = stage_of(module)
            if other is not None and STAGES.index(other) > STAGES.index(me):
                backwards.append(f"{rel} imports {module}")
    assert not backwards, "\n".join(backwards)
    assert {stage_of(f"llgbm_jax.{d}") for d in os.listdir(os.path.join(ROOT, "llgbm_jax"))
            if os.path.isdir(os.path.join(ROOT, "llgbm_jax", d)) and not d.startswith("__")} <= set(STAGES)


def test_scripts_and_tests_call_the_library():
    """No test runs a script through runpy or a sys.path change; every script is a few lines over the library."""
    offenders = [os.path.relpath(p, ROOT) for p in python_files("tests", "experiments", "benchmarks", "convert")
                 if p != __file__ and re.search(r"\brunpy\b|sys\.path\.(insert|append)", open(p).read())]
    assert not offenders, offenders
    for path in python_files("experiments", "benchmarks", "convert"):
        code = [line for line in open(path).read().split('"""')[-1].splitlines() if line.strip()]
        assert len(code) <= 5 and any("llgbm_jax" in line for line in code), os.path.relpath(path, ROOT)
