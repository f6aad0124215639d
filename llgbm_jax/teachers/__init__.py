"""Teacher LoRAs: supervised fine-tuning (`sft`), one resumable run (`run`), the zoo of runs and its presets
(`zoo`), and the zoo's one manifest reader (`manifest`)."""

from llgbm_jax.teachers.manifest import ZooAdapter, final_adapters, read_manifest, read_zoo
from llgbm_jax.teachers.run import (START_RECORD, RunResult, StaleRunError, TeacherConfig, chunk_records, start_record,
                                    start_record_changes, train_run)
from llgbm_jax.teachers.sft import batch_plan, collate, encode_sft, end_of_turn_id, sft_loss, train_step
from llgbm_jax.teachers.zoo import PRESETS, ZooConfig, build_zoo

__all__ = ["PRESETS", "START_RECORD", "RunResult", "StaleRunError", "TeacherConfig", "ZooAdapter", "ZooConfig",
           "batch_plan", "build_zoo", "chunk_records", "collate", "encode_sft", "end_of_turn_id", "final_adapters",
           "read_manifest", "read_zoo", "sft_loss", "start_record", "start_record_changes", "train_run", "train_step"]
