"""The conftest guard: a test not marked ``default_model`` cannot load the embedded model, in process or in a child."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import pytest_collection_modifyitems

from geomprobe.core.errors import GeomprobeError
from geomprobe.models.loading import default_gguf_path, load_checkpoint


def test_unmarked_test_cannot_load_the_default_model_in_process():
    with pytest.raises(GeomprobeError, match="default-model-blocked-for-unmarked-tests"):
        default_gguf_path()
    with pytest.raises(GeomprobeError, match="default-model-blocked-for-unmarked-tests"):
        load_checkpoint("default")


def test_unmarked_test_cannot_load_the_default_model_in_a_cli_child(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "geomprobe",
            "cache",
            "--model",
            "default",
            "--dataset",
            "harmful-harmless",
            "--limit",
            "4",
            "--out",
            str(tmp_path / "x.h5"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "default-model-blocked-for-unmarked-tests" in proc.stderr
    assert not (tmp_path / "x.h5").exists()


class _Item:
    def __init__(self, fixturenames):
        self.fixturenames = fixturenames
        self.markers = []

    def add_marker(self, marker):
        self.markers.append(marker.name)


def test_tests_are_marked_by_their_fixture_closure():
    uses, indirect, plain = _Item(["default_model", "tmp_path"]), _Item(["my_fixture", "default_model"]), _Item(["tiny_llama"])
    pytest_collection_modifyitems(None, [uses, indirect, plain])  # type: ignore[arg-type]
    assert uses.markers == ["default_model"] and indirect.markers == ["default_model"] and plain.markers == []
