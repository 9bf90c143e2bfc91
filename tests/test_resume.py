"""Crash safety: kill -9 a real caching process at random moments, resume, compare bit for bit."""

import os
import random
import signal
import stat
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from tiny import build_tiny_model

import geomprobe
import geomprobe.activations.collect
from geomprobe.activations.segments import parts_dir
from geomprobe.activations.store import partial_path
from geomprobe.core.errors import GeomprobeError


@pytest.fixture(scope="module")
def slow_tiny_dir(tmp_path_factory):
    # Wide enough that caching takes a few seconds, so kills land mid-run.
    return build_tiny_model(tmp_path_factory.mktemp("slow-tiny"), "llama", n_layers=4, d_model=256)


def _command(model_dir, out, *extra):
    return [
        sys.executable,
        "-m",
        "geomprobe",
        "cache",
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--dataset",
        "harmful-harmless",
        "--limit",
        "120",
        "--pooling",
        "last,mean,all",
        "--batch-size",
        "2",
        "--segment-rows",
        "8",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


# One thread: stable timing for the kill schedule, and no OpenMP spinning against the test runner.
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _arrays(path):
    with h5py.File(path) as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out


def _segments(out):
    folder = parts_dir(out)
    return len([p for p in folder.glob("seg-*.h5")]) if folder.exists() else 0


def test_kill_9_at_random_moments_then_resume_is_bit_identical(slow_tiny_dir, tmp_path):
    reference = tmp_path / "reference.h5"
    subprocess.run(_command(slow_tiny_dir, reference), check=True, capture_output=True, env=ENV)
    expected = _arrays(reference)
    rng = random.Random(1234)
    for trial in range(3):
        out = tmp_path / f"killed-{trial}.h5"
        kills = 0
        for _attempt in range(1 + trial % 2):
            proc = subprocess.Popen(_command(slow_tiny_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
            # Kill after a random number of finished parts plus a random delay: mid-batch, mid-write.
            target = _segments(out) + rng.randint(1, 6)
            deadline = time.time() + 120
            while proc.poll() is None and _segments(out) < target and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.3))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            assert not out.exists() or proc.returncode == 0  # never a file under the final name early
        assert kills >= 1
        result = subprocess.run(_command(slow_tiny_dir, out), capture_output=True, text=True, env=ENV)
        assert result.returncode == 0, result.stderr
        assert "resumed after" in result.stdout
        got = _arrays(out)
        assert got.keys() == expected.keys()
        for name, values in expected.items():
            assert np.array_equal(got[name], values), name
        assert not parts_dir(out).exists() and not partial_path(out).exists()


def test_changed_settings_refuse_to_resume(slow_tiny_dir, tmp_path):
    out = tmp_path / "c.h5"
    proc = subprocess.Popen(_command(slow_tiny_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    while _segments(out) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _segments(out) >= 1
    changed = _command(slow_tiny_dir, out)
    changed[changed.index("last,mean,all")] = "last"
    result = subprocess.run(changed, capture_output=True, text=True, env=ENV)
    assert result.returncode == 2 and "poolings differ" in result.stderr and "--restart" in result.stderr
    assert "Traceback" not in result.stderr
    result = subprocess.run([*changed, "--restart"], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr
    with geomprobe.open_cache(out) as cache:
        assert cache.poolings == ["last"]


def test_unwritable_folder_is_a_clear_error(tiny_llama, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(GeomprobeError, match="not writable"):
        geomprobe.activations.collect.cache_activations(tiny_llama, "control", folder / "x.h5", limit=4)


def test_full_disk_keeps_parts_resumable(tiny_llama, tmp_path, monkeypatch):
    from geomprobe.activations import store

    out = tmp_path / "full.h5"
    real_append = store.CacheWriter.append
    calls = {"n": 0}

    def failing_append(self, **batch):
        calls["n"] += 1
        if calls["n"] == 4 and not batch.get("stored"):
            raise OSError(28, "No space left on device")
        return real_append(self, **batch)

    monkeypatch.setattr(store.CacheWriter, "append", failing_append)
    with pytest.raises(GeomprobeError, match="disk full.*resume"):
        geomprobe.activations.collect.cache_activations(tiny_llama, "control", out, limit=12, batch_size=2, segment_rows=2)
    assert not out.exists() and _segments(out) == 3
    monkeypatch.setattr(store.CacheWriter, "append", real_append)
    result = geomprobe.activations.collect.cache_activations(tiny_llama, "control", out, limit=12, batch_size=2, segment_rows=2)
    assert result.resumed_from == 6
    fresh = geomprobe.activations.collect.cache_activations(tiny_llama, "control", tmp_path / "fresh.h5", limit=12, batch_size=2)
    np.testing.assert_array_equal(
        geomprobe.read_activations(out, "blocks.1.hook_resid_post", "mean"),
        geomprobe.read_activations(fresh.path, "blocks.1.hook_resid_post", "mean"),
    )


def test_corruption_and_truncation_are_detected(tiny_llama, tmp_path):
    path = geomprobe.activations.collect.cache_activations(tiny_llama, "control", tmp_path / "c.h5", limit=16).path
    hook = "blocks.1.hook_resid_post"
    with h5py.File(path) as f:
        offset = f[f"activations/{hook}/last"].id.get_chunk_info(0).byte_offset
    corrupted = tmp_path / "corrupted.h5"
    data = bytearray(path.read_bytes())
    data[offset + 100 : offset + 108] = b"\xff" * 8
    corrupted.write_bytes(bytes(data))
    with geomprobe.open_cache(corrupted) as cache, pytest.raises(GeomprobeError, match="corrupted"):
        cache.read(hook, "last")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(GeomprobeError, match="truncated"):
        geomprobe.open_cache(truncated)
