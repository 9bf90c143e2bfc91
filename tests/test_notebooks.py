"""The notebooks in notebooks/: committed without outputs, public API only, and they run top to
bottom (nbclient) with small sizes (GEOMPROBE_NB_QUICK=1); a cell that errors fails the test."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 1800  # a hang guard: a quick audit cell on the default model takes minutes, more on a loaded machine


def _code(path: Path) -> list[str]:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def test_five_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_audit_checkpoint.ipynb",
        "02_dishonesty_probe.ipynb",
        "03_layerwise_geometry.ipynb",
        "04_model_organisms.ipynb",
        "05_deception_organisms.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_clean_and_public(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit notebooks without outputs"
    for source in _code(path):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geomprobe"):
                assert not any(part.startswith("_") for part in node.module.split(".")), node.module
                assert not any(alias.name.startswith("_") for alias in node.names), "private name imported"


def _execute(path: Path, workdir: Path, env: dict[str, str]) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(
            nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
        )
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    assert images >= 3, "the notebook should display its plots"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_on_tiny_model(path, tiny_llama_dir, tmp_path):
    _execute(
        path,
        tmp_path,
        {"GEOMPROBE_NB_QUICK": "1", "GEOMPROBE_NB_MODEL": str(tiny_llama_dir), "GEOMPROBE_NB_OUT": str(tmp_path / "out")},
    )


@pytest.mark.slow
@pytest.mark.default_model
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_on_default_model(path, tmp_path):
    _execute(
        path, tmp_path, {"GEOMPROBE_NB_QUICK": "1", "GEOMPROBE_NB_MODEL": "default", "GEOMPROBE_NB_OUT": str(tmp_path / "out")}
    )
