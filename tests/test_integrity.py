"""Integrity that cannot be switched off (issue 21, parts 1 and 2): checksums a format requires,
unique label names, derived probe fields checked on load, model identity compared exactly,
full-content hashes for cache keys, special files refused, an unreadable resume manifest, and
model folders whose weights do not fit their config."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from geomprobe.activations.format import CHECKSUM_ATTR
from geomprobe.activations.segments import MANIFEST, ResumableWriter, parts_dir
from geomprobe.activations.store import open_cache, write_cache
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import file_sha256, folder_sha256
from geomprobe.core.labels import binary_labels, choose_positive
from geomprobe.models import folder_fingerprint, load_checkpoint
from geomprobe.organisms.build import base_identity
from geomprobe.probes import check_compatible, load_probe, save_probe, train_probes

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture()
def cache(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 20)
    acts = {HOOK: (rng.normal(size=(40, 8)) + labels[:, None]).astype(np.float32)}
    return write_cache(
        tmp_path / "c.h5",
        acts,
        labels,
        ["harmless", "harmful"],
        pair_ids=np.tile(np.arange(20), 2),
        texts=[f"t{i}" for i in range(40)],
        attrs={"model_id": "model-a"},
    )


# -- checksums a format requires -----------------------------------------------------------------
def test_deleting_checksums_of_a_1_1_cache_and_flipping_labels_is_refused(cache, tmp_path):
    forged = tmp_path / "forged.h5"
    shutil.copyfile(cache, forged)
    with h5py.File(forged, "r+") as f:
        f["labels"][...] = 1 - f["labels"][()]
        del f.attrs[CHECKSUM_ATTR]
    with pytest.raises(GeomprobeError, match=r"format 1\.1 requires the 'checksums' attribute, which is missing"):
        open_cache(forged)


def test_checksums_missing_one_digest_is_refused(cache, tmp_path):
    forged = tmp_path / "forged.h5"
    shutil.copyfile(cache, forged)
    with h5py.File(forged, "r+") as f:
        digests = json.loads(f.attrs[CHECKSUM_ATTR])
        del digests["labels"]
        f.attrs[CHECKSUM_ATTR] = json.dumps(digests)
    with pytest.raises(GeomprobeError, match="not a JSON object with a digest of labels"):
        open_cache(forged)


# -- unique label names ----------------------------------------------------------------------------
def test_repeated_label_names_are_refused_everywhere(cache, tmp_path):
    forged = tmp_path / "dup.h5"
    shutil.copyfile(cache, forged)
    with h5py.File(forged, "r+") as f:
        f.attrs["label_names"] = json.dumps(["harmful", "harmful"])
    with pytest.raises(GeomprobeError, match="'label_names' names 'harmful' twice"):
        open_cache(forged)
    with pytest.raises(GeomprobeError, match="'a' twice"):
        write_cache(tmp_path / "new.h5", {HOOK: np.zeros((2, 4), np.float32)}, [0, 1], ["a", "a"])
    assert not (tmp_path / "new.h5").exists()
    with pytest.raises(GeomprobeError, match="twice"):
        binary_labels(np.array([0, 1, 0, 1]), ["harmful", "harmful"])
    with pytest.raises(GeomprobeError, match="twice"):
        choose_positive(["x", "x"])
    # Unique names still pick by name: "harmful" is the positive class wherever it sits.
    assert binary_labels(np.array([0, 1, 1, 0]), ["harmful", "harmless"]).y.tolist() == [1, 0, 0, 1]


# -- probe fields derived from others, and model identity ------------------------------------------
@pytest.fixture()
def probe(cache, tmp_path) -> Path:
    probes, _ = train_probes(cache, "mean-diff", test_size=0.25, device="cpu")
    return save_probe(probes, tmp_path / "probe")


def _edit_tensors(folder: Path, edit) -> None:
    tensors = load_numpy(str(folder / "probe.safetensors"))
    edit(tensors)
    save_numpy(tensors, str(folder / "probe.safetensors"))


def test_probe_direction_must_equal_coef_over_scale(probe, tmp_path):
    loaded = load_probe(probe)
    np.testing.assert_allclose(loaded.direction(HOOK), loaded.fit.coef[0] / loaded.fit.scale[0])
    flipped = tmp_path / "flipped"
    shutil.copytree(probe, flipped)
    _edit_tensors(flipped, lambda t: t.__setitem__(f"{HOOK}.direction", -t[f"{HOOK}.direction"]))
    with pytest.raises(GeomprobeError, match=r"'blocks\.0\.hook_resid_post\.direction' is not coef / scale"):
        load_probe(flipped)
    zero_scale = tmp_path / "zero_scale"
    shutil.copytree(probe, zero_scale)
    _edit_tensors(zero_scale, lambda t: t[f"{HOOK}.scale"].__setitem__(0, 0.0))
    with pytest.raises(GeomprobeError, match="scale <= 0"):
        load_probe(zero_scale)


def _edit_sidecar(folder: Path, edit) -> None:
    side = json.loads((folder / "probe.json").read_text())
    edit(side)
    (folder / "probe.json").write_text(json.dumps(side))


def test_probe_model_identity_is_required_and_compared_exactly(probe, tmp_path):
    assert load_probe(probe).model_id == "model-a"
    missing = tmp_path / "missing"
    shutil.copytree(probe, missing)
    _edit_sidecar(missing, lambda s: s.pop("model_id"))
    with pytest.raises(GeomprobeError, match="lacks 'model_id'"):
        load_probe(missing)
    emptied = tmp_path / "emptied"
    shutil.copytree(probe, emptied)
    _edit_sidecar(emptied, lambda s: s.__setitem__("model_id", ""))
    erased = load_probe(emptied)
    # An erased id no longer switches the check off: it differs from the model the data came from.
    with pytest.raises(GeomprobeError, match=r"\(none recorded\)' but the cache is from 'model-a'"):
        check_compatible(erased, model_id="model-a")
    with pytest.raises(GeomprobeError, match="--allow-model-mismatch"):
        load_probe(probe, expect_model_id="")
    assert check_compatible(erased, model_id="model-a", allow_model_mismatch=True) is True
    assert check_compatible(load_probe(probe), model_id="model-a") is False


# -- full-content hashes and special files -----------------------------------------------------------
def test_folder_identity_covers_every_byte(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, last in ((a, 0), (b, 1)):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        data = bytearray(3 << 20)
        data[-1] = last  # differs after the first MiB, same size
        (folder / "model.safetensors").write_bytes(bytes(data))
    assert folder_fingerprint(a) != folder_fingerprint(b)
    assert base_identity(a) != base_identity(b)
    assert file_sha256(a / "model.safetensors") == hashlib.sha256((a / "model.safetensors").read_bytes()).hexdigest()
    # Independent recomputation of the documented folder digest.
    expected = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        expected.update(len(name).to_bytes(8, "little") + name.encode() + hashlib.sha256((a / name).read_bytes()).digest())
    assert folder_sha256(a) == expected.hexdigest()


def test_devices_and_pipes_are_refused_not_read(tmp_path):
    with pytest.raises(GeomprobeError, match="device, pipe or socket"):
        base_identity("/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(GeomprobeError, match="device, pipe or socket"):
        file_sha256(fifo)
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    os.mkfifo(model / "weights.bin")
    with pytest.raises(GeomprobeError, match="device, pipe or socket"):
        folder_fingerprint(model)


# -- resume manifest -----------------------------------------------------------------------------------
def _writer(out: Path, settings: dict) -> ResumableWriter:
    return ResumableWriter(out, n_rows=8, segment_rows=4, settings=settings, writer_kwargs={})


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]", b"[" * 100_000])
def test_unreadable_manifest_stops_the_resume(tmp_path, content):
    out = tmp_path / "c.h5"
    parts = parts_dir(out)
    parts.mkdir()
    (parts / MANIFEST).write_bytes(content)
    (parts / "seg-000000000-000000004.h5").write_bytes(b"old rows")
    with pytest.raises(GeomprobeError, match="manifest of an interrupted run") as info:
        _writer(out, {"rows_sha256": "new"})
    assert "--restart" in str(info.value)
    assert (parts / "seg-000000000-000000004.h5").read_bytes() == b"old rows"  # nothing discarded silently


def test_parts_without_manifest_stop_the_resume(tmp_path):
    out = tmp_path / "c.h5"
    parts = parts_dir(out)
    parts.mkdir()
    (parts / "seg-000000000-000000004.h5").write_bytes(b"old rows")
    with pytest.raises(GeomprobeError, match="left parts without manifest.json"):
        _writer(out, {"rows_sha256": "new"})
    writer = ResumableWriter(out, n_rows=8, segment_rows=4, settings={"rows_sha256": "new"}, writer_kwargs={}, restart=True)
    assert writer.start_row == 0 and json.loads((parts / MANIFEST).read_text()) == {"rows_sha256": "new"}
    writer.lock.release()


# -- model folders whose weights do not fit the config ---------------------------------------------------
def _variant(base: Path, dest: Path, edit_weights=None, edit_config=None) -> Path:
    shutil.copytree(base, dest)
    if edit_weights is not None:
        tensors = load_file(str(dest / "model.safetensors"))
        edit_weights(tensors)
        save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    if edit_config is not None:
        config = json.loads((dest / "config.json").read_text())
        edit_config(config)
        (dest / "config.json").write_text(json.dumps(config))
    return dest


NORM = "model.norm.weight"
UP = "model.layers.1.mlp.up_proj.weight"
BROKEN_MODELS = {
    "missing-tensor": (lambda t: t.pop(UP), None, f"lacks 1 weight tensor(s) the config needs ({UP})"),
    "unexpected-tensor": (
        lambda t: t.__setitem__("model.extra.weight", t[NORM].clone()),
        None,
        "holds 1 weight tensor(s) its config has no place for (model.extra.weight)",
    ),
    "wrong-shape": (
        lambda t: t.__setitem__(NORM, torch.ones(32)),
        None,
        f"tensor '{NORM}' has shape (32,) but the config needs (64,)",
    ),
    "more-layers-in-config": (None, lambda c: c.__setitem__("num_hidden_layers", 3), "lacks 9 weight tensor(s)"),
    "wider-config": (None, lambda c: c.__setitem__("hidden_size", 128), "21 tensor(s) mis-shaped"),
    "layers-as-text": (None, lambda c: c.__setitem__("num_hidden_layers", "two"), "expected int, got str"),
    "zero-heads": (None, lambda c: c.__setitem__("num_attention_heads", 0), "ZeroDivisionError"),
    "negative-width": (None, lambda c: c.__setitem__("hidden_size", -4), "negative dimension"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_MODELS))
def test_weights_that_do_not_fit_the_config_are_refused(case, tiny_llama_dir, tmp_path):
    edit_weights, edit_config, expect = BROKEN_MODELS[case]
    folder = _variant(tiny_llama_dir, tmp_path / case, edit_weights, edit_config)
    with pytest.raises(GeomprobeError) as info:
        load_checkpoint(folder)
    message = str(info.value)
    assert expect in message and "\n" not in message, message


def test_a_fitting_checkpoint_still_loads_its_own_weights(tiny_llama_dir):
    ckpt = load_checkpoint(tiny_llama_dir)
    stored = load_file(str(tiny_llama_dir / "model.safetensors"))
    for name, value in ckpt.hf_model.state_dict().items():
        assert torch.equal(value, stored[name]), name


# -- reading and writing safetensors -----------------------------------------------------------------------
def test_safetensors_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    from geomprobe.core.artifacts import read_safetensors

    tensors = {"w": np.arange(6, dtype=np.float64)}
    for pad in range(400):  # find metadata that makes the header length's low byte 0x80
        path = tmp_path / "t.safetensors"
        save_numpy(tensors, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no header length with low byte 0x80 found")
    np.testing.assert_array_equal(read_safetensors(path, "fix")["w"], tensors["w"])
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 20)  # a pickle's opening bytes
    with pytest.raises(GeomprobeError, match="looks like a pickle"):
        read_safetensors(path, "fix")


def test_safetensors_write_failure_is_one_line(tmp_path):
    """A file-size limit makes the safetensors writer fail as a full disk does (its own error type)."""
    import subprocess
    import sys

    script = f"""
import resource, signal
import numpy as np
from geomprobe.activations.store import write_cache
from geomprobe.probes import save_probe, train_probes
from geomprobe.core.errors import GeomprobeError
labels = np.repeat([0, 1], 20)
acts = {{"blocks.0.hook_resid_post": np.random.default_rng(0).normal(size=(40, 512)).astype(np.float32)}}
cache = write_cache({str(tmp_path / "c.h5")!r}, acts, labels, ["harmless", "harmful"])
probes, _ = train_probes(cache, "mean-diff", device="cpu")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))
try:
    save_probe(probes, {str(tmp_path / "p")!r})
except GeomprobeError as exc:
    print("ERROR", exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert "Traceback" not in out.stderr, out.stderr
    assert "ERROR cannot write" in out.stdout and "probe.safetensors' (File too large)" in out.stdout, out.stdout
    assert not (tmp_path / "p" / "probe.safetensors").exists()


def test_multiplier_that_overflows_the_dtype_is_refused(tiny_llama):
    from geomprobe.steering.apply import check_multiplier_fits, steer

    vector = np.zeros(64, dtype=np.float32)
    vector[3] = 2.0  # norm 2
    limit = float(np.sqrt(np.finfo(np.float32).max))
    assert check_multiplier_fits(vector, 0.49 * limit) == pytest.approx(0.49 * limit)
    with pytest.raises(GeomprobeError, match="overflows float32"):
        check_multiplier_fits(vector, 0.51 * limit)
    with pytest.raises(GeomprobeError, match="overflows float16"):
        check_multiplier_fits(vector, 200.0, "float16")  # 400 > 256
    # What the limit protects against: past it the norm layer's square overflows and the tiny model's
    # logits collapse (all equal, or not finite): nothing it generates depends on the prompt any more.
    ids = tiny_llama.tokenizer("hello there", return_tensors="pt")["input_ids"]
    scaled = torch.from_numpy(vector * np.float32(0.51 * limit))
    hook = tiny_llama.hf_model.model.layers[0].register_forward_hook(
        lambda m, i, o: (o[0] + scaled,) + tuple(o[1:]) if isinstance(o, tuple) else o + scaled
    )
    try:
        with torch.no_grad():
            logits = tiny_llama.hf_model(ids).logits
    finally:
        hook.remove()
    assert not torch.isfinite(logits).all() or bool((logits == logits.flatten()[0]).all())
    with pytest.raises(GeomprobeError, match="overflows float32"):
        with steer(tiny_llama, torch.from_numpy(vector), 0.51 * limit, hooks="blocks.0.hook_resid_post"):
            pass
