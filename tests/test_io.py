"""geomprobe.core.io: the output checks, atomic files and folders, and OSError as one line.

The failure tests simulate a full disk by making the write itself raise ``OSError(ENOSPC)`` after
part of the data has gone out, then check that the error is one line naming the path and the fix,
that no temporary file or partial output is left, and that an existing output is byte-identical.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from geomprobe.activations import merge as merge_module
from geomprobe.activations.store import CacheWriter, open_cache, partial_path, write_cache
from geomprobe.cli import main
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import (
    atomic_file,
    atomic_folder,
    atomic_write_bytes,
    atomic_write_text,
    check_new_file,
    check_output_file,
    check_output_folder,
    write_error,
    write_json,
)
from geomprobe.plots._style import new_figure, save_figure

FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones included) -> sha256 of its bytes, or 'dir'."""
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def assert_one_line_disk_full(exc: pytest.ExceptionInfo, path: Path) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("disk full while writing ") and repr(str(path)) in message
    assert "free some space" in message


def half_then_full(real):
    """A write that puts out the first half of its data, then fails as a full disk does."""

    def write(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise FULL

    return write


# -- checks -------------------------------------------------------------------------------------
def test_check_output_file(tmp_path):
    (tmp_path / "old.h5").write_bytes(b"x")
    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(GeomprobeError, match=r"is a directory; give a file name such as .*cache\.h5"):
        check_output_file(tmp_path / "dir.h5", overwrite=True, example_name="cache.h5")
    with pytest.raises(GeomprobeError, match="already exists; pass --overwrite"):
        check_output_file(tmp_path / "old.h5", overwrite=False)
    assert check_output_file(str(tmp_path / "old.h5"), overwrite=True) == tmp_path / "old.h5"
    assert check_output_file(tmp_path / "new.h5", overwrite=False) == tmp_path / "new.h5"
    with pytest.raises(GeomprobeError, match=r"folder .*nowhere.* for --json 'a.json' does not exist; create it first"):
        check_output_file(tmp_path / "nowhere" / "a.json", overwrite=True, what="--json")
    # side outputs (--json, --plot) are refused when they exist, unless overwrite (issue 16)
    with pytest.raises(GeomprobeError, match="--json .*old.h5' already exists; pass --overwrite"):
        check_new_file(tmp_path / "old.h5", "--json")
    check_new_file(tmp_path / "old.h5", "--json", overwrite=True)
    check_new_file(None, "--json")
    with pytest.raises(GeomprobeError, match="--plot .* is a directory"):
        check_new_file(tmp_path / "dir.h5", "--plot")
    assert snapshot(tmp_path) == {"dir.h5": "dir", "old.h5": hashlib.sha256(b"x").hexdigest()}


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_check_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(GeomprobeError, match="is not writable"):
            check_output_file(folder / "x.h5", overwrite=False)
        with pytest.raises(GeomprobeError, match="is not writable"):
            check_output_folder(folder / "out", overwrite=False)
    finally:
        folder.chmod(0o700)


def test_check_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(GeomprobeError, match="probe output .* is a file; give a folder name"):
        check_output_folder(tmp_path / "file", overwrite=True, what="probe", holds="probe.json")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "notes.txt").write_text("mine")
    # a folder with other files but no probe in it may take one; one holding a probe needs overwrite
    assert check_output_folder(probe, overwrite=False, what="probe", holds="probe.json") == probe
    (probe / "probe.json").write_text("{}")
    with pytest.raises(GeomprobeError, match="already holds a probe; pass --overwrite"):
        check_output_folder(probe, overwrite=False, what="probe", holds="probe.json")
    check_output_folder(probe, overwrite=True, what="probe", holds="probe.json")
    # written whole: any non-empty folder needs overwrite, an empty one does not
    with pytest.raises(GeomprobeError, match="checkpoint output .* exists and is not empty"):
        check_output_folder(probe, overwrite=False, what="checkpoint")
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", overwrite=False)
    with pytest.raises(GeomprobeError, match="does not exist; create it first"):
        check_output_folder(tmp_path / "a" / "b", overwrite=False)


# -- atomic files -------------------------------------------------------------------------------
def test_atomic_writes_replace_whole_files(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    data = np.random.default_rng(0).bytes(100_000)
    assert atomic_write_bytes(path, data) == path
    assert path.read_bytes() == data
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\n".encode()
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": np.float32(1.5), "c": np.arange(3), "d": (float("inf"),)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": 1.5, "c": [0, 1, 2], "d": [None]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "out.bin", "t.txt"]


@pytest.mark.parametrize("kind", ["bytes", "text", "json"])
def test_full_disk_leaves_existing_file_and_no_temp(tmp_path, monkeypatch, kind):
    path = tmp_path / "out.json"
    path.write_text('{"kept": true}\n')
    before = snapshot(tmp_path)
    monkeypatch.setattr(pathlib.Path, "write_bytes", half_then_full(pathlib.Path.write_bytes))
    monkeypatch.setattr(pathlib.Path, "write_text", half_then_full(pathlib.Path.write_text))
    with pytest.raises(GeomprobeError) as exc:
        if kind == "bytes":
            atomic_write_bytes(path, b"0123456789" * 1000)
        elif kind == "text":
            atomic_write_text(path, "new text " * 1000)
        else:
            write_json(path, {"rows": list(range(1000))})
    assert_one_line_disk_full(exc, path)
    assert snapshot(tmp_path) == before


def test_atomic_file_failure_of_any_kind_removes_the_temp(tmp_path):
    path = tmp_path / "x.bin"
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # a temp left by a killed run is cleared and the write goes through
    (tmp_path / ".x.bin.tmp").write_bytes(b"stale")
    with atomic_file(path) as tmp:
        with open(tmp, "ab") as f:
            f.write(b"fresh")
    assert path.read_bytes() == b"fresh" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_save_figure_full_disk(tmp_path, monkeypatch):
    fig, ax = new_figure()
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "plot.png"
    assert save_figure(fig, path) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    real_savefig = Figure.savefig
    before = snapshot(tmp_path)

    def full_savefig(self, fname, **kwargs):
        real_savefig(self, fname, **kwargs)  # the bytes went out, then the disk filled up
        with open(fname, "r+b") as f:
            f.truncate(100)
        raise FULL

    monkeypatch.setattr(Figure, "savefig", full_savefig)
    fig2, ax2 = new_figure()
    ax2.plot([0, 1], [0, 1])
    with pytest.raises(GeomprobeError) as exc:
        save_figure(fig2, path)
    assert_one_line_disk_full(exc, path)
    assert snapshot(tmp_path) == before
    assert not plt.fignum_exists(fig2.number)


def test_save_figure_format_follows_suffix(tmp_path):
    fig, ax = new_figure()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "f.svg")
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:400]
    assert [p.name for p in tmp_path.iterdir()] == ["f.svg"]


# -- atomic folders -------------------------------------------------------------------------------
def test_atomic_folder_publishes_whole_and_replaces_only_with_overwrite(tmp_path):
    out = tmp_path / "ckpt"
    with atomic_folder(out, overwrite=False, what="checkpoint") as staging:
        (staging / "a.txt").write_text("1")
        assert not out.exists()
    assert snapshot(tmp_path) == {"ckpt": "dir", "ckpt/a.txt": hashlib.sha256(b"1").hexdigest()}
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    with pytest.raises(GeomprobeError, match="not empty"), atomic_folder(out, overwrite=False, what="checkpoint"):
        pass
    with atomic_folder(out, overwrite=True, what="checkpoint") as staging:
        (staging / "b.txt").write_text("2")
    assert snapshot(tmp_path) == {"ckpt": "dir", "ckpt/b.txt": hashlib.sha256(b"2").hexdigest()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_folder_full_disk_keeps_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "weights.bin").write_bytes(b"old weights")
    before = snapshot(tmp_path)
    monkeypatch.setattr(pathlib.Path, "write_bytes", half_then_full(pathlib.Path.write_bytes))
    with pytest.raises(GeomprobeError) as exc, atomic_folder(out, overwrite=True, what="checkpoint") as staging:
        (staging / "config.json").write_text("{}")
        (staging / "weights.bin").write_bytes(b"new weights" * 100)
    assert_one_line_disk_full(exc, out)
    assert snapshot(tmp_path) == before


def test_atomic_folder_restores_the_old_folder_when_the_swap_fails(tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "weights.bin").write_bytes(b"old weights")
    before = snapshot(tmp_path)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".ckpt.partial-"):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(GeomprobeError, match=r"cannot write .*ckpt.*; fix the cause and try again") as exc:
        with atomic_folder(out, overwrite=True) as staging:
            (staging / "weights.bin").write_bytes(b"new")
    assert "\n" not in str(exc.value)
    assert snapshot(tmp_path) == before


# -- messages -------------------------------------------------------------------------------------
def test_write_error_names_path_cause_and_fix():
    path = Path("/data/out dir/x.h5")
    cases = {
        errno.ENOSPC: "disk full while writing '/data/out dir/x.h5'; free some space and rerun it",
        errno.EROFS: (
            "cannot write '/data/out dir/x.h5' (read-only file system); make it writable or choose another folder, and rerun it"
        ),
        errno.EACCES: "cannot write '/data/out dir/x.h5' (permission denied); fix the folder's permissions and rerun it",
        errno.EPERM: "cannot write '/data/out dir/x.h5' (permission denied); fix the folder's permissions and rerun it",
        errno.EIO: f"cannot write '/data/out dir/x.h5' ({os.strerror(errno.EIO)}); fix the cause and rerun it",
    }
    for code, expected in cases.items():
        assert str(write_error(OSError(code, os.strerror(code)), path, "rerun it")) == expected
    # h5py puts the errno only in its message text
    h5_style = OSError(
        "Can't synchronously write data (file write failed: time = Mon, errno = 28, error message = 'No space left on device')"
    )
    assert str(write_error(h5_style, path)).startswith("disk full while writing")
    assert str(write_error(OSError("weird"), path)) == "cannot write '/data/out dir/x.h5' (weird); fix the cause and try again"


# -- caches ---------------------------------------------------------------------------------------
def test_write_cache_full_disk_keeps_the_existing_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    path = tmp_path / "c.h5"
    X = rng.normal(size=(6, 4)).astype(np.float32)
    write_cache(path, {"blocks.0.hook_resid_post": X}, [0, 1, 0, 1, 0, 1], ["a", "b"])
    before = snapshot(tmp_path)
    real_append = CacheWriter.append

    def full_append(self, **batch):
        real_append(self, **batch)  # data went into the partial file, then the disk filled up
        raise FULL

    monkeypatch.setattr(CacheWriter, "append", full_append)
    with pytest.raises(GeomprobeError) as exc:
        write_cache(path, {"blocks.0.hook_resid_post": 2 * X}, [0, 1, 0, 1, 0, 1], ["a", "b"], overwrite=True)
    assert_one_line_disk_full(exc, path)
    assert snapshot(tmp_path) == before and not partial_path(path).exists()
    with open_cache(path) as cache:
        assert np.array_equal(cache.read("blocks.0.hook_resid_post"), X)


def test_merge_cli_full_disk_is_one_line_and_keeps_the_old_output(tmp_path, monkeypatch, capsys):
    from test_merge import make_shards

    paths, X, _, _ = make_shards(tmp_path)
    out = tmp_path / "c.h5"
    assert main(["merge", str(out)]) == 0
    before = snapshot(tmp_path)
    real_copied = merge_module._copied

    def full_copied(dst: h5py.File, name, handles, lengths):
        real_copied(dst, name, handles, lengths)
        raise FULL

    monkeypatch.setattr(merge_module, "_copied", full_copied)
    capsys.readouterr()
    assert main(["merge", str(out), "--copy", "--overwrite"]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0] == f"geomprobe: error: disk full while writing {str(out)!r}; free some space and rerun geomprobe merge"
    assert snapshot(tmp_path) == before
    with open_cache(out) as merged:
        assert merged.attrs["merge_mode"] == "virtual"
        assert np.array_equal(merged.read("blocks.0.hook_resid_post"), X["blocks.0.hook_resid_post"])


def test_atomic_folder_never_replaces_the_current_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    for target in (".", "..", f"{work}/../work"):
        with pytest.raises(GeomprobeError, match="is the current folder or holds it"):
            with atomic_folder(target, overwrite=True, what="checkpoint") as staging:
                (staging / "x").write_text("new")
    assert snapshot(tmp_path) == before
    # a relative name is built beside it and published under that name
    with atomic_folder("out", overwrite=False) as staging:
        (staging / "x").write_text("new")
    assert (work / "out" / "x").read_text() == "new"
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt", "out"]


# -- issue 16: real read-only and full disks, free-space checks, the parts lock -----------------------
def _namespaces_work() -> bool:
    """True where ``unshare -rm`` lets an unprivileged user mount a tmpfs or a read-only bind mount."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || mount -t tmpfs -o size=64k tmpfs /tmp",
        ],
        capture_output=True,
    )
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -rm to mount a tmpfs / read-only folder")


def _run_in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable, PYTHONIOENCODING="utf-8")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@needs_namespaces
def test_read_only_folder_for_real_is_one_line_and_keeps_the_old_output(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 10)
    write_cache(
        tmp_path / "c.h5",
        {"blocks.0.hook_resid_post": (rng.normal(size=(20, 4)) + labels[:, None]).astype(np.float32)},
        labels,
        ["harmless", "harmful"],
        attrs={"n_layers": 1},
    )
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.json").write_text('{"keep": "me"}\n')
    before = snapshot(ro)
    # --overwrite: the only thing stopping the write is the read-only mount.
    script = (
        f"mount --bind '{ro}' '{ro}' && mount -o remount,bind,ro '{ro}' && "
        f"\"$PYTHON\" -m geomprobe aqi '{tmp_path / 'c.h5'}' --n-bootstrap 0 --n-permutations 0 --json '{ro / 'old.json'}' "
        f"--plot '{ro / 'new.png'}' --overwrite"
    )
    proc = _run_in_namespace(script, tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("geomprobe: error: "), proc.stderr
    assert "read-only" in lines[0] or "not writable" in lines[0], lines[0]
    assert snapshot(ro) == before  # old output untouched, no temporary file


@needs_namespaces
def test_full_disk_for_real_in_cache_is_one_line_not_a_crash(tmp_path, tiny_llama_dir):
    full = tmp_path / "full"
    full.mkdir()
    # 48 KiB: the manifest fits, the first segment's activations do not; HDF5 used to segfault at exit here.
    script = (
        f"mount -t tmpfs -o size=48k tmpfs '{full}' && \"$PYTHON\" -m geomprobe cache --model '{tiny_llama_dir}' "
        f"--device cpu --limit 64 --quiet --out '{full / 'c.h5'}'; code=$?; ls -A '{full}'; exit $code"
    )
    proc = _run_in_namespace(script, tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr[-2000:]}"
    assert len(lines) == 1 and "disk full while writing" in lines[0], proc.stderr[-2000:]
    assert proc.stdout.strip() == ""  # no segment finished: nothing left to resume, nothing left behind


def test_check_free_space_refuses_before_writing(tmp_path, monkeypatch):
    from geomprobe.core.io import check_free_space

    free = shutil.disk_usage(tmp_path).free
    check_free_space(tmp_path, 1, tmp_path / "x.h5")
    with pytest.raises(GeomprobeError, match=r"^disk full while writing .*x\.h5'; free some space"):
        check_free_space(tmp_path, free * 4 + (1 << 40), tmp_path / "x.h5")
    assert snapshot(tmp_path) == {}


def test_parts_lock_refuses_a_second_writer_and_is_released(tmp_path):
    from geomprobe.activations.segments import ResumableWriter, check_not_busy, parts_dir

    kwargs = dict(
        n_rows=4,
        segment_rows=2,
        settings={"a": 1},
        writer_kwargs=dict(hooks=["blocks.0.hook_resid_post"], poolings=["last"], d_model=3, label_names=["a", "b"]),
    )
    out = tmp_path / "c.h5"
    check_not_busy(out)  # no parts folder: free
    first = ResumableWriter(out, **kwargs)
    lock_text = (parts_dir(out) / "lock").read_text().strip()
    assert lock_text == str(os.getpid())
    with pytest.raises(GeomprobeError, match=rf"another geomprobe run is writing .*c\.h5' \(pid {os.getpid()}\); wait for it"):
        ResumableWriter(out, **kwargs)
    with pytest.raises(GeomprobeError, match="another geomprobe run"):
        check_not_busy(out)
    with pytest.raises(GeomprobeError, match="another geomprobe run"):
        ResumableWriter(out, restart=True, **kwargs)  # --restart must not wipe a live run's parts
    assert (parts_dir(out) / "manifest.json").is_file()
    first.abort()  # nothing finished: the parts folder goes, and the lock with it
    assert not parts_dir(out).exists()
    second = ResumableWriter(out, **kwargs)
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    second.append(range(0, 2), activations={"blocks.0.hook_resid_post": {"last": rows}}, labels=[0, 1])
    second.append(range(2, 4), activations={"blocks.0.hook_resid_post": {"last": rows + 1}}, labels=[1, 0])
    second.finish()
    assert not parts_dir(out).exists()
    with open_cache(out) as cache:
        np.testing.assert_array_equal(cache.read("blocks.0.hook_resid_post", "last"), np.vstack([rows, rows + 1]))
    check_not_busy(out)


def test_parts_lock_is_dropped_when_the_holder_dies(tmp_path):
    """A run killed with -9 leaves its parts folder, but the kernel drops its flock: the next run resumes."""
    from geomprobe.activations.segments import check_not_busy, parts_dir

    out = tmp_path / "c.h5"
    parts = parts_dir(out)
    parts.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                f"fd = os.open({str(parts / 'lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
                "print('held', flush=True)\ntime.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GeomprobeError, match=rf"\(pid {holder.pid}\)"):
            check_not_busy(out)
    finally:
        holder.kill()
        holder.wait()
    check_not_busy(out)
