"""Set-up shared by the main job and the ablation experiments: `AblationConfig` and `setup_base_components`.

`setup_base_components(ablation_config, training_config)` loads (or builds, when missing) everything a
generator run stands on: the base model, the text encoder, the probes and the base model's hidden
states on them, the teachers' behavioural deltas (cached), and the training dataset.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from llgbm_jax.base.model import DEFAULT_MODEL
from llgbm_jax.generator.config import TrainingConfig

# What supervises the generator (issue: the ablation over supervision modes): TrainingConfig fields per mode.
MODES = {
    "weight_only": dict(weight_loss="factors", lambda_weight=1.0, lambda_delta=0.0, lambda_sft=0.0),  # raw A, B
    "delta_w": dict(weight_loss="delta_w", lambda_weight=1.0, lambda_delta=0.0, lambda_sft=0.0),  # the default
    "delta_only": dict(weight_loss="delta_w", lambda_weight=0.0, lambda_delta=1.0, lambda_sft=0.0),  # behaviour
    "multitask": dict(weight_loss="delta_w", lambda_weight=1.0, lambda_delta=1.0, lambda_sft=0.0),  # ΔW + behaviour
    "sft": dict(weight_loss="delta_w", lambda_weight=0.0, lambda_delta=0.0, lambda_sft=1.0),  # end to end
    "sft+delta_w": dict(weight_loss="delta_w", lambda_weight=1.0, lambda_delta=0.0, lambda_sft=1.0),
}


def mode_config(config: TrainingConfig, mode: str, lambda_delta: float | None = None) -> TrainingConfig:
    """``config`` supervised as ``mode`` (a key of `MODES`); ``lambda_delta`` overrides the behavioural weight of
    the modes that have one."""
    if mode not in MODES:
        raise ValueError(f"unknown supervision mode {mode!r}; known: {list(MODES)}")
    fields = dict(MODES[mode])
    if lambda_delta is not None and fields["lambda_delta"] > 0:
        fields["lambda_delta"] = lambda_delta
    return config.replace(**fields)


# The probe set is a fixed instrument: the same for every training seed, so runs share the delta cache and their
# behavioural numbers are measured alike.
PROBE_SEED = 0


@dataclasses.dataclass(frozen=True)
class UnseenConfig:
    """The unseen-tasks study (`llgbm_jax.evaluation.unseen`): the family zoo, the held-out split, the generators
    and the baselines. The supervision ablation runs on the same study."""

    run_dir: str = "runs/unseen"
    zoo_dir: str = "runs/zoo_family"
    zoo_preset: str = "family"
    model: str = DEFAULT_MODEL
    kinds: tuple[str, ...] | None = None  # the family's kinds in the study (None: all)
    tasks: tuple[str, ...] | None = None  # or the family's tasks in the study (overrides kinds)
    held_out_kinds: tuple[str, ...] = ("format", "digits")
    inside_per_kind: int = 1
    outside_per_kind: int = 1
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 400  # generator optimizer updates
    learning_rate: float = 3e-3
    num_prompts: int = 8  # example prompts per condition (training and held-out)
    description_share: float = 0.25  # of training conditions: one description of the task alone
    eval_samples: int = 24  # test questions per held-out task
    seen_tasks: int = 6  # seen tasks (spread over them) on which the generator's fit is scored too
    exact_match: bool = True
    multitask_steps: int | None = None  # None: the seen teachers' steps summed (their total budget)
    generator_hidden: int = 512
    num_probes: int = 8  # behavioural probes (the dataset's deltas; the ΔW loss does not use them)
    max_probe_length: int = 64
    mode: str = "delta_w"  # the generators' supervision (a key of MODES); another writes to run_dir/<mode>
    # Each generated adapter is the multi-task LoRA plus the generator's correction (TrainingConfig.base_adapter);
    # writes to run_dir/<mode>_on_multitask.
    on_multitask: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"UnseenConfig.mode={self.mode!r}: unknown supervision mode; known: {list(MODES)}")

    @property
    def generators_dir(self) -> str:
        """Where the generators, results and plot go: the study's folder for ``delta_w``, else a subfolder per mode,
        ``<mode>_on_multitask`` with ``on_multitask`` (the split, multi-task LoRA and score cache stay shared)."""
        if self.on_multitask:
            return os.path.join(self.run_dir, f"{self.mode}_on_multitask")
        return self.run_dir if self.mode == "delta_w" else os.path.join(self.run_dir, self.mode)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for field, default in (("mode", "delta_w"), ("on_multitask", False)):
            if d[field] == default:  # studies written before the field match
                del d[field]
        return d


@dataclasses.dataclass
class AblationConfig:
    """The research notebook's ablation settings; where set they override the `TrainingConfig`'s fields
    (``deltas_dir`` is the delta cache, ``zoo_dir`` the teacher zoo). The fields after ``tasks`` set up the
    ablation over supervision modes (`llgbm_jax.evaluation.supervision`); they are not `TrainingConfig` fields."""

    checkpoint_dir: str | None = None
    deltas_dir: str | None = None
    output_dir: str | None = None
    use_small_model: bool | None = None
    batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    num_probes: int | None = None
    max_probe_length: int | None = None
    delta_batch_probes: int | None = None
    text_encoder_name: str | None = None
    freeze_text_encoder: bool | None = None
    num_prompts_per_adapter: int | None = None
    zoo_dir: str | None = None
    description_share: float | None = None
    # --- not TrainingConfig fields ---
    tasks: tuple[str, ...] | None = None  # the zoo's tasks the generator sees (None: all)
    run_dir: str = "runs/ablations"
    modes: tuple[str, ...] = tuple(MODES)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 400  # generator steps of the same-steps comparison
    budget_seconds: float | None = None  # training time per generator of the same-budget comparison, compiles
    # excluded (None: `steps` steps of delta_w)
    timing_steps: int = 10  # steps per mode that time a step for the budget (run_dir/step_seconds.json)
    seen_tasks: int = 12  # seen tasks whose accuracy is measured (spread over the seen list)
    gauge_test: bool = True
    study: UnseenConfig = dataclasses.field(default_factory=UnseenConfig)  # the zoo, split and baselines

    ABLATION_FIELDS = ("tasks", "run_dir", "modes", "seeds", "steps", "budget_seconds", "timing_steps", "seen_tasks",
                       "gauge_test", "study")

    def __post_init__(self):
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise ValueError(f"unknown supervision modes {unknown}; known: {list(MODES)}")

    def apply(self, config: TrainingConfig) -> TrainingConfig:
        """``config`` with this ablation's settings (the ones not None) in place."""
        changes = {("delta_cache_dir" if f.name == "deltas_dir" else f.name): getattr(self, f.name)
                   for f in dataclasses.fields(self)
                   if f.name not in self.ABLATION_FIELDS and getattr(self, f.name) is not None}
        return config.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (getattr(self, f.name).to_dict() if f.name == "study" else getattr(self, f.name))
                for f in dataclasses.fields(self)}


@dataclasses.dataclass
class BaseComponents:
    """What `setup_base_components` returns. Unpacks (and indexes, by position or name) as the notebook's
    eight values; the rest are attributes for the main job and the ablations."""

    base_model: Any
    tokenizer: Any
    text_encoder: Any
    functional_lora: Any
    probe_tokens: Any  # [P, S] int32
    probe_masks: Any  # [P, S] int32
    base_activation: Any  # [P, H] float32: the base model's final hidden state at each probe's last token
    dataset: Any  # RealAdapterDataset, training split
    # --- beyond the notebook's eight ---
    config: TrainingConfig = None  # the training config with the ablation's settings applied
    probes: Any = None  # the ProbeSet (its hash keys the delta cache)
    adapters: Any = None  # every ZooAdapter of the zoo
    teacher_deltas: Any = None  # adapter name -> behavioural delta [H], of the adapters the two datasets hold
    eval_dataset: Any = None  # RealAdapterDataset, held-out split (held-out adapters and prompts)

    NOTEBOOK_FIELDS = ("base_model", "tokenizer", "text_encoder", "functional_lora", "probe_tokens", "probe_masks",
                       "base_activation", "dataset")

    def sft_data(self):
        """The training tasks' examples for the end-to-end loss (`SFTData`, ``config.sft_rows`` per adapter)."""
        from llgbm_jax.generator.sft_data import SFTData

        return SFTData(self.base_model, sorted({a.task for a in self.dataset.adapters}), rows=self.config.sft_rows,
                       max_seq_len=self.config.sft_max_seq_len, seed=self.config.seed, data_dir=self.config.data_dir)

    @property
    def delta_inputs(self):
        """The behavioural loss's arrays (`DeltaInputs`: base parameters, probes, base hidden states) for `train`."""
        from llgbm_jax.generator.losses import DeltaInputs

        return DeltaInputs(self.base_model.params, self.probe_tokens, self.probe_masks, self.base_activation)

    def __iter__(self):
        return (getattr(self, f) for f in self.NOTEBOOK_FIELDS)

    def __len__(self):
        return len(self.NOTEBOOK_FIELDS)

    def __getitem__(self, key):
        return getattr(self, key if isinstance(key, str) else self.NOTEBOOK_FIELDS[key])


def task_descriptions(tasks) -> dict[str, tuple[str, ...]]:
    """The one-line descriptions of those ``tasks`` that have some (the generated family's)."""
    from llgbm_jax.tasks.family import descriptions, family_task_names

    family = set(family_task_names())
    return {t: descriptions(t) for t in tasks if t in family}


def setup_base_components(ablation_config: AblationConfig | None, training_config: TrainingConfig, *,
                          base_model=None, show_progress: bool = True) -> BaseComponents:
    """Load the base model and text encoder, build the probes and their base activations, compute (or read
    from the cache) the behavioural delta of every teacher the datasets hold, and build the training and held-out
    `RealAdapterDataset`s of the zoo in ``config.zoo_dir`` (which must exist: the main job builds it first), of
    ``ablation_config.tasks`` only when that is set (the tasks a generator may see)."""
    from llgbm_jax.base import load_base_model
    from llgbm_jax.base.functional import FunctionalLoRA
    from llgbm_jax.conditions.deltas import DeltaCache, probe_hidden
    from llgbm_jax.conditions.probes import build_probes, default_probe_tasks
    from llgbm_jax.conditions.text_encoder import EmbeddingCache, load_text_encoder
    from llgbm_jax.generator.dataset import RealAdapterDataset, make_splits, split_adapters
    from llgbm_jax.teachers.manifest import read_zoo

    config = ablation_config.apply(training_config) if ablation_config is not None else training_config
    base_model = base_model or load_base_model(config.model_name, dtype=config.dtype)
    text_encoder = load_text_encoder(config.text_encoder_name)
    functional_lora = FunctionalLoRA(base_model, config.lora_rank, config.lora_alpha, config.target_modules)
    probes = build_probes(base_model, config.num_probes, config.max_probe_length, PROBE_SEED,
                          default_probe_tasks(config.data_dir), data_dir=config.data_dir)
    base_activation = probe_hidden(base_model, probes, delta_batch_probes=config.delta_batch_probes)
    adapters = read_zoo(config.zoo_dir)
    tasks = getattr(ablation_config, "tasks", None)
    if tasks is not None:
        missing = sorted(set(tasks) - {a.task for a in adapters})
        if missing:
            raise ValueError(f"{config.zoo_dir}: the zoo has no teachers of tasks {missing}")
        adapters = [a for a in adapters if a.task in set(tasks)]
    splits = make_splits(adapters, config.heldout_prompt_fraction, config.seed)
    used = [a for split in ("train", "eval")
            for a in split_adapters(adapters, splits, split, config.teacher_checkpoints)]
    deltas = DeltaCache(config.delta_cache_dir).get_many(base_model, probes, [a.path for a in used],
                                                         show_progress=show_progress,
                                                         delta_batch_probes=config.delta_batch_probes)
    teacher_deltas = {a.name: d for a, d in zip(used, deltas)}
    if config.freeze_text_encoder:
        kw = {"condition": "embeddings", "embed": EmbeddingCache(config.embedding_cache_dir, text_encoder).get}
    else:
        kw = {"condition": "tokens", "text_encoder": text_encoder}
    datasets = [RealAdapterDataset(config.zoo_dir, base_model.config, split=split, splits=splits,
                                   num_prompts_per_adapter=config.num_prompts_per_adapter, seed=config.seed,
                                   checkpoints=config.teacher_checkpoints,
                                   teacher_deltas=teacher_deltas, tasks=tasks,
                                   description_share=config.description_share,
                                   descriptions=task_descriptions(sorted({a.task for a in adapters})),
                                   **kw) for split in ("train", "eval")]
    return BaseComponents(base_model, base_model.tokenizer, text_encoder, functional_lora, probes.ids, probes.mask,
                          base_activation, datasets[0], config=config, probes=probes, adapters=adapters,
                          teacher_deltas=teacher_deltas, eval_dataset=datasets[1])
