"""The Colab notebook (`experiments/delta_w_colab.ipynb`) executed top to bottom by a Jupyter kernel on the CPU, on
a tiny random model (SmolLM2's tokenizer) with a tiny zoo preset: no cell may fail, and it must show the curves,
the accuracy table and the exported PEFT adapters."""

from __future__ import annotations

import json
import os

import nbformat
from nbclient import NotebookClient

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "experiments", "delta_w_colab.ipynb")


def test_colab_notebook_runs_top_to_bottom(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("LLGBM_NOTEBOOK_TINY", tiny_folder[0])
    monkeypatch.setenv("LLGBM_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "cpu: 1 device(s)" in text and "zoo preset notebook_tiny" in text
    assert "accuracy on held-out questions" in text and "generated" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 2  # the training curves and the accuracy plot, inline
    results = json.loads((tmp_path / "out" / "run" / "results.json").read_text())
    assert len(results["training"]["loss_history"]) == 6
    for task, folder in results["exported"].items():
        assert f"{task} -> {folder}" in text
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(folder))
