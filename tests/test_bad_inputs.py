"""Run the bad-input corpus (tests/bad_inputs/cases.py): one error line, exit code 2, nothing written."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "bad_inputs"))
from build import build_corpus_root  # noqa: E402
from cases import CASES, SUBPROCESS_IDS  # noqa: E402

import geomprobe.cli  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("bad inputs ü")  # a space and non-ASCII in every path
    return root, build_corpus_root(root, tiny_llama_dir)


def _snapshot(*folders: Path) -> dict[str, str]:
    """Every file and folder under ``folders`` -> content hash (folders: 'dir')."""
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            out[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _argv(case, paths) -> list[str]:
    return [token.format(**paths) for token in case.argv]


def _check_stderr(case, code: int, err: str) -> None:
    assert code == 2, f"{case.id}: exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, f"{case.id}: traceback:\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    if case.usage:
        # argparse: usage lines, then one "geomprobe <cmd>: error: ..." line.
        assert lines and lines[-1].startswith("geomprobe") and ": error:" in lines[-1], f"{case.id}: {err}"
        message = lines[-1]
    else:
        assert len(lines) == 1, f"{case.id}: expected one error line, got:\n{err}"
        message = lines[0]
        assert message.startswith("geomprobe: error: "), f"{case.id}: {message}"
    assert case.expect.lower() in message.lower(), f"{case.id}: {case.expect!r} not in {message!r}"


def _outputs_unchanged(case, paths, before: dict[str, str], root: Path, model: Path) -> None:
    after = _snapshot(root, model)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    assert not (added or removed or changed), f"{case.id}: added {added}, removed {removed}, changed {changed}"
    for out in case.outputs:
        out = out.format(**paths)
        assert (out in before) == Path(out).exists(), f"{case.id}: {out} appeared or vanished"


def test_corpus_is_big_and_covers_every_command():
    assert len(CASES) >= 400
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {c.argv[0] if c.argv[0] in ("aqi", "cache") else " ".join(c.argv[:2]) for c in CASES}
    for needed in (
        "cache",
        "aqi",
        "subspace acts",
        "subspace weights",
        "subspace project",
        "probe train",
        "probe eval",
        "probe transfer",
        "probe tokens",
        "probe score",
        "steer build",
        "steer generate",
        "steer search",
        "steer ablate",
        "steer export-gguf",
        "steer screen",
        "organisms list",
        "organisms build",
        "probe deception-set",
        "audit --model",
    ):
        assert needed in commands, needed


def test_corpus_covers_issue_21_classes():
    """Forged integrity, broken models, outputs checked together, parser limits and late checks each have cases."""
    ids = {c.id for c in CASES}
    for prefix, at_least in (
        ("r3-aqi-", 5),
        ("r3-probedir-", 20),
        ("r3-model-", 30),
        ("r3-out-", 10),
        ("r3-in-", 10),
        ("r3-owned-", 4),
        ("r3-plot-ext-", 8),
        ("r3-jsonl-", 6),
        ("r3-organisms-", 8),
    ):
        assert sum(i.startswith(prefix) for i in ids) >= at_least, prefix


def test_corpus_covers_outputs_disks_and_arguments():
    """Every writing command meets a read-only and a full disk; every output flag an existing file."""
    faults = {(c.fault, " ".join(c.argv[:2])) for c in CASES if c.fault}
    for command in (
        "aqi {good_h5}",
        "cache --model",
        "subspace acts",
        "subspace weights",
        "subspace project",
        "probe train",
        "probe eval",
        "probe transfer",
        "probe score",
        "steer build",
        "steer generate",
        "steer ablate",
        "steer export-gguf",
        "steer screen",
    ):
        for fault in ("erofs", "enospc"):
            assert (fault, command) in faults, (fault, command)
    flagged = {
        (" ".join(c.argv[:2]), c.argv[c.argv.index(flag)])
        for c in CASES
        for flag in ("--json", "--plot", "--html", "--table")
        if flag in c.argv and "already exists" in c.expect
    }
    for output in ("--json", "--plot", "--html", "--table"):
        assert any(flag == output for _, flag in flagged), output
    assert any(c.hold_lock for c in CASES)


FAULT_ERRNO = {"erofs": errno.EROFS, "enospc": errno.ENOSPC}


def _fail_renames_into(root: Path, fault: str, monkeypatch) -> None:
    """Make every rename whose target lies under ``root`` fail as a read-only or full disk would.

    Every output is published by a rename (core/io), so this reaches each command's last step,
    after any temporary file has been written.
    """
    code = FAULT_ERRNO[fault]
    real_replace, real_rename = os.replace, os.rename

    def failing(real):
        def call(src, dst, *args, **kwargs):
            if str(root) in os.fspath(dst):
                raise OSError(code, os.strerror(code), os.fspath(dst))
            return real(src, dst, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "replace", failing(real_replace))
    monkeypatch.setattr(os, "rename", failing(real_rename))


def _hold_parts_lock(output: Path) -> tuple[int, Path]:
    """Take the parts lock of ``output`` as a running cache would (pid 4242 inside)."""
    parts = output.with_name(f".{output.name}.parts")
    parts.mkdir()
    fd = os.open(parts / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    return fd, parts


PARAMS = [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)] if c.xfail else []) for c in CASES]


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input_in_process(case, corpus, capsys, monkeypatch):
    root, paths = corpus
    model = Path(paths["model"])
    monkeypatch.chdir(root)  # anything written to a relative default path would show in the snapshot
    lock = _hold_parts_lock(Path(case.hold_lock.format(**paths))) if case.hold_lock else None
    try:
        before = _snapshot(root, model)
        capsys.readouterr()
        with monkeypatch.context() as patched:
            if case.fault:
                _fail_renames_into(root, case.fault, patched)
            try:
                code = geomprobe.cli.main(_argv(case, paths))
            except SystemExit as exc:  # argparse exits itself
                code = exc.code
        captured = capsys.readouterr()
        _check_stderr(case, code, captured.err)
        _outputs_unchanged(case, paths, before, root, model)
    finally:
        if lock is not None:
            os.close(lock[0])
            shutil.rmtree(lock[1])


@pytest.mark.parametrize("case_id", SUBPROCESS_IDS)
def test_bad_input_subprocess(case_id, corpus):
    case = next(c for c in CASES if c.id == case_id)
    root, paths = corpus
    model = Path(paths["model"])
    before = _snapshot(root, model)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "geomprobe", *_argv(case, paths)], capture_output=True, text=True, env=env, cwd=root, timeout=120
    )
    _check_stderr(case, proc.returncode, proc.stderr)
    _outputs_unchanged(case, paths, before, root, model)


def _interruptible() -> None:
    """Child set-up: SIGINT back to its default. A shell that starts a job in the background (``&``
    without job control) leaves SIGINT ignored, children inherit that, and Python then never raises
    KeyboardInterrupt: the Ctrl-C tests would test nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("delay", [0.8, 3.0])
def test_ctrl_c_during_start_up_is_one_line_and_leaves_nothing(delay, tmp_path, tiny_llama_dir):
    """SIGINT while the imports run or the model loads: exit 130, one line, no traceback, no files."""
    import signal
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8", GEOMPROBE_HOME=str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geomprobe",
            "cache",
            "--model",
            str(tiny_llama_dir),
            "--device",
            "cpu",
            "--limit",
            "400",
            "--batch-size",
            "1",
            "--quiet",
        ],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, f"exit {proc.returncode}:\n{err}"
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("geomprobe: interrupted"), err
    assert list(work.iterdir()) == []  # not even the default activations/ folder


def test_ctrl_c_swallowed_by_a_finalizer_still_stops_the_program():
    """A KeyboardInterrupt raised inside __del__ is only printed by Python; the hook re-sends it."""
    script = (
        "import time\n"
        "from geomprobe.core.errors import redeliver_swallowed_interrupts\n"
        "redeliver_swallowed_interrupts()\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        raise KeyboardInterrupt\n"
        "Finalized()\n"
        "try:\n"
        "    time.sleep(5)\n"
        "except KeyboardInterrupt:\n"
        "    print('stopped')\n"
        "else:\n"
        "    print('ran on')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, preexec_fn=_interruptible)
    assert proc.stdout.strip() == "stopped", proc.stdout + proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr
