"""Data parallelism (`llgbm_jax.utils.mesh`): the generator's training step with its batch split over a mesh of
8 forced host devices gives the loss and parameters of one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.utils.mesh import data_devices

from test_dataset import MC, write_zoo

# Runs in a process with 8 CPU devices (XLA_FLAGS must be set before JAX starts): trains the same generator with
# its batch on 1 and on 8 devices and saves each run's loss history and parameters.
EIGHT_DEVICES = textwrap.dedent("""
    import json, sys, zlib
    import jax, numpy as np
    from flax import nnx
    from llgbm_jax.base.config import ModelConfig
    from llgbm_jax.generator.config import TrainingConfig
    from llgbm_jax.generator.dataset import RealAdapterDataset
    from llgbm_jax.generator.model import create_generator
    from llgbm_jax.generator.training import train

    zoo, out = sys.argv[1], sys.argv[2]
    assert jax.device_count() == 8
    from llgbm_jax.utils.mesh import data_devices
    assert data_devices(8) == 8 and data_devices(12) == 4  # the default: gcd(batch size, devices)
    mc = ModelConfig.from_dict(json.load(open(out + "/model_config.json")))
    embed = lambda texts: np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=384)
                                    for t in texts]).astype(np.float32)
    for n in (1, 8):
        cfg = TrainingConfig(batch_size=8, num_steps=3, warmup_steps=1, lora_rank=4, lora_alpha=8.0, generator_hidden=32,
                             embedding_dim=8, num_prompts_per_adapter=4, teacher_checkpoints="all",
                             data_parallel_devices=n, checkpoint_dir=f"{out}/ckpt{n}")
        dataset = RealAdapterDataset(zoo, mc, num_prompts_per_adapter=4, embed=embed, checkpoints="all")
        gen = create_generator(cfg, 0, model_config=mc)
        state = train(gen, dataset, cfg, model_config=mc, show_progress=False)
        leaves = jax.tree_util.tree_leaves(nnx.state(gen, nnx.Param))
        assert all(len(x.sharding.device_set) == n for x in leaves)  # trained on n devices
        params = jax.tree_util.tree_leaves(nnx.to_pure_dict(nnx.state(gen, nnx.Param)))
        np.savez(f"{out}/params{n}.npz", *[np.asarray(p) for p in params])
        json.dump(state.loss_history, open(f"{out}/loss{n}.json", "w"))
""")


def test_data_devices_divide_the_batch():
    assert data_devices(4) == 1  # one local device here
    assert data_devices(4, 1) == 1
    with pytest.raises(ValueError, match="must divide the batch size 4 and be at most the 1 local"):
        data_devices(4, 2)
    with pytest.raises(ValueError, match="data_parallel_devices=3: must be None or a positive divisor of batch_size=4"):
        TrainingConfig(batch_size=4, data_parallel_devices=3)


def test_generator_training_on_8_devices_equals_one(tmp_path):
    zoo = write_zoo(tmp_path / "zoo", steps=(10, 20, 30, 40, 50, 60))
    (tmp_path / "model_config.json").write_text(json.dumps(MC.to_dict()))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, zoo, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    loss = {n: json.loads((tmp_path / f"loss{n}.json").read_text()) for n in (1, 8)}
    assert len(loss[1]) == 3 and len(set(loss[1])) == 3  # three different steps
    np.testing.assert_allclose(loss[8], loss[1], rtol=1e-5)
    one, eight = (np.load(tmp_path / f"params{n}.npz") for n in (1, 8))
    assert len(one.files) == len(eight.files) > 4
    for k in one.files:
        np.testing.assert_allclose(eight[k], one[k], rtol=1e-5, atol=1e-6)
