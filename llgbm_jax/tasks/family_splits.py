"""Which tasks of the generated family a generator sees, and which it is judged on unseen (`FamilySplit`).

Three held-out groups, saved with a run (`FamilySplit.to_dict`):

- ``inside``: parameter values strictly inside the seen range of every parametric kind (``fam_add_7`` held out,
  ``fam_add_1..6`` and ``fam_add_8..18`` seen);
- ``outside``: the largest parameter values of every parametric kind (``fam_add_19``, ``fam_add_20``),
  extrapolation;
- ``kind``: every task of whole kinds (``format``, ``digits`` by default).

A held-out task's teacher is the oracle to compare with only: it is never a training target and its prompts
are never training conditions (`llgbm_jax.evaluation.unseen` trains on ``seen`` alone).
"""

from __future__ import annotations

import dataclasses

from llgbm_jax.tasks.family import KINDS

GROUPS = ("inside", "outside", "kind")


@dataclasses.dataclass(frozen=True)
class FamilySplit:
    seen: tuple[str, ...]
    inside: tuple[str, ...]
    outside: tuple[str, ...]
    kind: tuple[str, ...]
    held_out_kinds: tuple[str, ...]

    @property
    def heldout(self) -> tuple[str, ...]:
        return self.inside + self.outside + self.kind

    def group(self, task: str) -> str:
        """``"seen"`` or the held-out group of ``task``."""
        for g in ("seen",) + GROUPS:
            if task in getattr(self, g):
                return g
        raise KeyError(f"{task!r} is not in this split")

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "FamilySplit":
        return cls(**{f.name: tuple(d[f.name]) for f in dataclasses.fields(cls)})


def family_split(held_out_kinds=("format", "digits"), inside_per_kind: int = 1, outside_per_kind: int = 1,
                 tasks=None) -> FamilySplit:
    """Hold out ``held_out_kinds`` whole and, in every other parametric kind, the ``outside_per_kind`` largest
    parameter values and ``inside_per_kind`` values spread evenly strictly inside the rest (all tasks of a kind
    with that value: ``fam_first_3`` and ``fam_last_3``). ``tasks`` restricts the family (default: all tasks)."""
    from llgbm_jax.tasks.family import family_task_names

    tasks = set(family_task_names() if tasks is None else tasks)
    unknown = sorted(tasks - set(family_task_names()))
    if unknown:
        raise KeyError(f"{unknown} are not tasks of the family")
    members = {k: [t for t in kind.transforms if f"fam_{t.name}" in tasks] for k, kind in KINDS.items()}
    missing = sorted(k for k in held_out_kinds if not members.get(k))
    if missing:
        raise KeyError(f"held-out kinds {missing} are unknown or have no task in the study; known: {sorted(KINDS)}")
    seen, inside, outside, whole = [], [], [], []
    for name, transforms in members.items():
        names = lambda values: [f"fam_{t.name}" for t in transforms if t.param in values]
        params = tuple(sorted({t.param for t in transforms if t.param is not None}))
        if name in held_out_kinds:
            whole += [f"fam_{t.name}" for t in transforms]
            continue
        if not params:
            seen += [f"fam_{t.name}" for t in transforms]
            continue
        rest = params[:len(params) - outside_per_kind]
        if len(rest) < inside_per_kind + 2:
            raise ValueError(f"kind {name!r} has too few parameter values {params} to hold out {outside_per_kind} "
                             f"outside and {inside_per_kind} strictly inside the seen range")
        picks = {rest[round((j + 1) * (len(rest) - 1) / (inside_per_kind + 1))] for j in range(inside_per_kind)}
        inside += names(picks)
        outside += names(params[len(rest):])
        seen += names(set(rest) - picks)
    return FamilySplit(tuple(seen), tuple(inside), tuple(outside), tuple(whole), tuple(held_out_kinds))
