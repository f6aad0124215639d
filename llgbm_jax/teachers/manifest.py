"""The zoo's one manifest reader: ``manifest.json`` lists every teacher adapter of a zoo (`build_zoo` writes it);
`read_zoo` gives them as `ZooAdapter`s with the training prompts each one saw."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from llgbm_jax.utils.io import read_json

MANIFEST = "manifest.json"


def manifest_path(zoo_dir: str) -> str:
    return os.path.join(zoo_dir, MANIFEST)


def read_manifest(zoo_dir: str, required: bool = False) -> dict[str, Any]:
    """``zoo_dir/manifest.json`` as a dict; a missing file gives ``{"adapters": []}`` (an error naming the
    folder when ``required``), anything but a JSON object with an ``adapters`` list an error naming the file."""
    path = manifest_path(zoo_dir)
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"{path}: no teacher zoo here (build one with `llgbm-jax zoo --zoo-dir "
                                    f"{zoo_dir}`, or let `llgbm-jax train` build it)")
        return {"adapters": []}
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("adapters", []), list):
        raise ValueError(f"{path}: expected a JSON object with an 'adapters' list")
    manifest.setdefault("adapters", [])
    return manifest


@dataclasses.dataclass(frozen=True)
class ZooAdapter:
    """One teacher adapter of a zoo: ``name`` is its folder relative to the zoo (``task/run/step_XXXXX``)."""

    name: str
    task: str
    run: str
    step: int
    path: str
    prompts: tuple[str, ...]


def read_zoo(zoo_dir: str) -> list[ZooAdapter]:
    """Every adapter listed in ``zoo_dir/manifest.json`` with the training prompts it saw."""
    manifest = read_manifest(zoo_dir, required=True)
    path = manifest_path(zoo_dir)
    out = []
    for i, a in enumerate(manifest.get("adapters", [])):
        for key in ("task", "run", "step", "path", "prompts"):
            if key not in a:
                raise ValueError(f"{path}: adapter entry {i} has no {key!r}")
        folder = os.path.join(zoo_dir, a["path"])
        prompts_file = os.path.join(zoo_dir, a["prompts"])
        try:
            prompts = read_json(prompts_file)
        except FileNotFoundError:
            raise FileNotFoundError(f"{prompts_file}: listed in {path} but missing") from None
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{prompts_file}: expected a non-empty JSON list of prompt strings")
        out.append(ZooAdapter(a["path"], a["task"], a["run"], int(a["step"]), folder, tuple(prompts)))
    if not out:
        raise ValueError(f"{path}: the manifest lists no adapters")
    return out


def final_adapters(adapters: Sequence[ZooAdapter]) -> list[ZooAdapter]:
    """The last checkpoint of every (task, run): the runs' finished teachers."""
    last: dict[tuple[str, str], ZooAdapter] = {}
    for a in adapters:
        if (a.task, a.run) not in last or a.step > last[a.task, a.run].step:
            last[a.task, a.run] = a
    return sorted(last.values(), key=lambda a: a.name)
