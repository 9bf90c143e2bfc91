"""Safe loading: no user file is ever unpickled, remote code stays off, and readers never see a
half-written cache."""

from __future__ import annotations

import ast
import inspect
import pickle
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import geomprobe
import geomprobe.cli
from geomprobe.activations.store import open_cache, write_cache
from geomprobe.core.errors import GeomprobeError

PACKAGE = Path(geomprobe.__file__).parent
HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")


class _Payload:
    """Unpickling this creates ``marker``: proof that a loader ran pickle on the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plain_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weights": _Payload(marker)}))


def _torch_pickle(path: Path, marker: Path) -> None:
    torch.save({"weights": _Payload(marker)}, path)  # zip archive holding a pickle


WRITERS = {"pickle": _plain_pickle, "torch.save": _torch_pickle}


def test_payload_really_fires(tmp_path):
    # Guard against a vacuous test: unpickling the payload does create the marker.
    marker = tmp_path / "fired"
    _plain_pickle(tmp_path / "x.pkl", marker)
    pickle.loads((tmp_path / "x.pkl").read_bytes())
    assert marker.exists()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    from geomprobe.probes import save_probe, train_probes
    from geomprobe.steering import build_from_cache

    root = tmp_path_factory.mktemp("safe")
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    acts = {h: (rng.normal(size=(40, 16)) + labels[:, None]).astype(np.float32) for h in HOOKS}
    cache = write_cache(root / "good.h5", acts, labels, ["harmless", "harmful"])
    probes, _ = train_probes(cache, "mean-diff", test_size=0.25, device="cpu")
    save_probe(probes, root / "probe")
    build_from_cache(cache).save(root / "vector")
    return root


def _run_cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = geomprobe.cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("writer", WRITERS)
def test_pickle_disguised_as_probe_is_refused(writer, artefacts, tmp_path, capsys):
    from geomprobe.probes import load_probe

    folder = tmp_path / "probe"
    shutil.copytree(artefacts / "probe", folder)
    marker = tmp_path / "marker"
    WRITERS[writer](folder / "probe.safetensors", marker)
    with pytest.raises(GeomprobeError, match="probe.safetensors"):
        load_probe(folder)
    code, err = _run_cli(["probe", "eval", folder, artefacts / "good.h5", "--no-control", "--json", tmp_path / "e.json"], capsys)
    assert code == 2 and err.startswith("geomprobe: error:") and "Traceback" not in err
    code, err = _run_cli(["steer", "build", "--probe", folder, "--out", tmp_path / "vec"], capsys)
    assert code == 2 and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "vec").exists()


@pytest.mark.parametrize("writer", WRITERS)
def test_pickle_disguised_as_vector_is_refused(writer, artefacts, tmp_path, capsys):
    from geomprobe.steering import SteeringVector

    folder = tmp_path / "vector"
    shutil.copytree(artefacts / "vector", folder)
    marker = tmp_path / "marker"
    WRITERS[writer](folder / "vector.safetensors", marker)
    with pytest.raises(GeomprobeError, match="vector.safetensors"):
        SteeringVector.load(folder)
    code, err = _run_cli(["steer", "export-gguf", folder, "--out", tmp_path / "v.gguf"], capsys)
    assert code == 2 and err.startswith("geomprobe: error:") and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "v.gguf").exists()


@pytest.mark.parametrize("writer", WRITERS)
def test_pickle_disguised_as_cache_is_refused(writer, tmp_path, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / "cache.h5"
    WRITERS[writer](path, marker)
    with pytest.raises(GeomprobeError, match="not a readable HDF5"):
        open_cache(path)
    for argv in (
        ["aqi", path],
        ["probe", "train", path, "--out", tmp_path / "p"],
        ["steer", "screen", path],
        ["subspace", "acts", path],
    ):
        code, err = _run_cli(argv, capsys)
        assert code == 2 and err.startswith("geomprobe: error:") and "Traceback" not in err, err
    assert not marker.exists()


def test_pickle_disguised_as_sidecar_is_refused(artefacts, tmp_path):
    from geomprobe.probes import load_probe
    from geomprobe.steering import SteeringVector

    marker = tmp_path / "marker"
    shutil.copytree(artefacts / "probe", tmp_path / "probe")
    shutil.copytree(artefacts / "vector", tmp_path / "vector")
    _plain_pickle(tmp_path / "probe" / "probe.json", marker)
    _plain_pickle(tmp_path / "vector" / "vector.json", marker)
    with pytest.raises(GeomprobeError):
        load_probe(tmp_path / "probe")
    with pytest.raises(GeomprobeError):
        SteeringVector.load(tmp_path / "vector")
    assert not marker.exists()


def test_pickled_model_weights_are_never_unpickled(tiny_llama_dir, tmp_path):
    """A model folder whose only weights are a malicious pytorch_model.bin: loading must not run it."""
    from geomprobe.models import load_checkpoint

    folder = tmp_path / "evil-model"
    folder.mkdir()
    for item in tiny_llama_dir.iterdir():
        if not item.name.endswith(".safetensors"):
            shutil.copy(item, folder / item.name)
    marker = tmp_path / "marker"
    _torch_pickle(folder / "pytorch_model.bin", marker)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; the marker is the point
        load_checkpoint(folder, device="cpu")
    assert not marker.exists()


# -- static checks on the package source -----------------------------------------------------------
def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_unsafe_deserialisation_in_the_package():
    bad = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                if any(
                    n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal") for n in names
                ):
                    bad.append(f"{path.name}:{node.lineno} imports {names}")
        for node, func in _calls(tree):
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            where = f"{path.relative_to(PACKAGE)}:{node.lineno} {func}"
            if func.endswith("torch.load") or func == "load" and "weights_only" in kw:
                if kw.get("weights_only") != "True":
                    bad.append(f"{where} without weights_only=True")
            if func.endswith(("np.load", "numpy.load")) and kw.get("allow_pickle") not in (None, "False"):
                bad.append(f"{where} with allow_pickle")
            if kw.get("allow_pickle") == "True":
                bad.append(f"{where} with allow_pickle=True")
            if kw.get("trust_remote_code") == "True":
                bad.append(f"{where} with trust_remote_code=True")
            if func in ("eval", "exec"):
                bad.append(f"{where}")
    assert not bad, "unsafe call sites:\n" + "\n".join(bad)


def test_scanner_catches_unsafe_code():
    # The checks above are only as good as their patterns: make sure they fire on bad code.
    src = "import torch\nx = torch.load(p)\ny = torch.load(p, weights_only=False)\nm = f(trust_remote_code=True)\n"
    hits = []
    for node, func in _calls(ast.parse(src)):
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if func.endswith("torch.load") and kw.get("weights_only") != "True":
            hits.append(func)
        if kw.get("trust_remote_code") == "True":
            hits.append("trc")
    assert hits == ["torch.load", "torch.load", "trc"]


def test_remote_code_is_off_unless_asked():
    from geomprobe import models
    from geomprobe.subspace import projection, weights

    for fn in (models.load_model, models.load_checkpoint, weights.weight_update_overlap, projection.project_finetune_update):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False, fn.__name__
    parser = geomprobe.cli.build_parser()
    for argv in (
        ["cache"],
        ["subspace", "weights", "--base", "a", "--aligned", "b"],
        ["steer", "generate", "v", "--prompt", "x"],
    ):
        assert parser.parse_args(argv).trust_remote_code is False
    # Every literal trust_remote_code=... in the package passes a variable or False, never True.
    for path in _sources():
        for match in re.finditer(r"trust_remote_code\s*=\s*(\w+)", path.read_text()):
            assert match.group(1) != "True", path


# -- concurrent readers --------------------------------------------------------------------------
def _read_all(path: Path) -> dict[str, np.ndarray]:
    with open_cache(path) as cache:
        out = {"labels": cache.labels, "token_offsets": cache.token_offsets}
        for hook in cache.hooks:
            for pooling in cache.poolings:
                out[f"{hook}/{pooling}"] = cache.read(hook, pooling)
        return out


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)


class _Reader(threading.Thread):
    """Open and read ``path`` in a loop until stopped; classify every read against the references."""

    def __init__(self, path: Path, references: dict[str, dict[str, np.ndarray]]) -> None:
        super().__init__(daemon=True)
        self.path, self.references = path, references
        self.stop = threading.Event()
        self.seen: dict[str, int] = {"absent": 0, **{name: 0 for name in references}}
        self.garbage: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(0.003):  # leave the writer the GIL and HDF5 lock most of the time
            try:
                got = _read_all(self.path)
            except GeomprobeError as exc:
                if "does not exist" not in str(exc):
                    self.garbage.append(f"error on a published file: {exc}")
                self.seen["absent"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - anything else is a torn read
                self.garbage.append(f"{type(exc).__name__}: {exc}")
                continue
            for name, ref in self.references.items():
                if _same(got, ref):
                    self.seen[name] += 1
                    break
            else:
                self.garbage.append("a read matched no complete reference")


def _cache(model, out: Path, **kw):
    from geomprobe.activations.collect import cache_activations

    return cache_activations(
        model,
        "harmful-harmless",
        out,
        limit=96,
        hooks=list(HOOKS),
        poolings=("last", "mean"),
        batch_size=16,
        segment_rows=16,
        **kw,
    )


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "reference.h5"
    _cache(tiny_llama, path)
    return _read_all(path)


def test_concurrent_readers_see_nothing_or_a_complete_file(tiny_llama, reference, tmp_path):
    out = tmp_path / "out.h5"
    reader = _Reader(out, {"new": reference})
    reader.start()
    try:
        _cache(tiny_llama, out)
        # Keep reading a little after publication so the reader sees the final file too.
        while reader.seen["new"] < 3 and reader.is_alive():
            reader.stop.wait(0.01)
    finally:
        reader.stop.set()
        reader.join(60)
    assert not reader.garbage, reader.garbage[:3]
    assert reader.seen["absent"] > 0 and reader.seen["new"] >= 3


def test_concurrent_readers_during_overwrite_see_old_or_new(tiny_llama, reference, tmp_path):
    new = reference
    out = tmp_path / "out.h5"
    # The previous complete file: same layout, different numbers.
    rng = np.random.default_rng(1)
    old_acts = {h: {p: rng.normal(size=(12, 64)).astype(np.float32) for p in ("last", "mean")} for h in HOOKS}
    write_cache(out, old_acts, np.repeat([0, 1], 6), ["harmless", "harmful"])
    old = _read_all(out)
    reader = _Reader(out, {"old": old, "new": new})
    reader.start()
    try:
        while reader.seen["old"] < 3 and reader.is_alive():
            reader.stop.wait(0.01)
        _cache(tiny_llama, out, overwrite=True)
        while reader.seen["new"] < 3 and reader.is_alive():
            reader.stop.wait(0.01)
    finally:
        reader.stop.set()
        reader.join(60)
    assert not reader.garbage, reader.garbage[:3]
    assert reader.seen["old"] >= 3 and reader.seen["new"] >= 3
    assert _same(_read_all(out), new)
