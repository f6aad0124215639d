"""Tasks: the registry of task names and splits (`registry`), answer formats and parsing (`formats`), and the
generated task family (`family`), whose ``fam_*`` tasks are registered on import."""

from llgbm_jax.tasks.family import KINDS, FamilyTask, family_task, family_task_names, kind_of  # registers fam_*
from llgbm_jax.tasks.formats import (BOOL_OPTIONS, TASK_TYPES, Record, answer_options, extract_bool_answer,
                                     extract_cloze_answer, extract_gsm8k_answer, extract_mcq_answer, gold_answer,
                                     mcq_to_cloze, parse_answer, question_text)
from llgbm_jax.tasks.registry import (DATA_ENV, LEAKAGE_RULE, SPLITS, TASKS, Task, get_data_dir, get_task,
                                      leakage_report, load_records, question_key, register_task, resolve_task,
                                      task_from_files)

__all__ = ["BOOL_OPTIONS", "DATA_ENV", "KINDS", "LEAKAGE_RULE", "SPLITS", "TASKS", "TASK_TYPES", "FamilyTask", "Record",
           "Task", "answer_options", "extract_bool_answer", "extract_cloze_answer", "extract_gsm8k_answer",
           "extract_mcq_answer", "family_task", "family_task_names", "get_data_dir", "get_task", "gold_answer",
           "kind_of", "leakage_report", "load_records", "mcq_to_cloze", "parse_answer", "question_key",
           "question_text", "register_task", "resolve_task", "task_from_files"]
