"""Hypothesis-driven CLI fuzz: random argv from the real subcommands and flags, with hostile values.

Whatever the argv, ``geomprobe`` must exit 0 or 2, never print a traceback, print at most one
error line, and write nothing outside the run's own temporary folder. Models are stubbed out
(a load raises a ``GeomprobeError``), so no example loads one and the test stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import geomprobe.cli
import geomprobe.models
import geomprobe.models.loading
from geomprobe.activations.format import CHECKSUM_ATTR
from geomprobe.activations.store import write_cache
from geomprobe.core.errors import GeomprobeError

REPO = Path(__file__).resolve().parents[1]
# Numbers and words that have broken argument handling before: non-finite, zero, negative, huge, empty.
HOSTILE = [
    "nan",
    "inf",
    "-inf",
    "NaN",
    "0",
    "-1",
    "-0.0",
    "1e309",
    "1e-320",
    "2",
    "0.5",
    "1.5",
    "4294967296",
    "",
    " ",
    "-",
    "--",
    "ü",
    "auto",
    "last",
    "harmful",
    "resid_post:0",
    "blocks.0.hook_resid_post",
    "0/2",
    "9/2",
    "x" * 300,
]
# File names, relative to the run's temporary folder (placeholders filled per run).
FILES = [
    "{good}",
    "{good}",
    "{missing}",
    "{folder}",
    "{existing}",
    "{text}",
    "{deep}/x.json",
    "out.json",
    "out.png",
    "new.h5",
    "newdir",
    # issue 21: a forged cache (checksums deleted, labels flipped), JSONL with U+2028 inside strings and one
    # nested past the recursion limit, a link to the good cache, a device, an unknown plot extension
    "{forged}",
    "{u2028}",
    "{deepjsonl}",
    "{link}",
    "/dev/zero",
    "/dev/null",
    "out.xyz",
]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every leaf command: (("steer", "build"), its parser), ..."""
    found = []
    for name, sub in _subparsers(geomprobe.cli.build_parser()).items():
        leaves = _subparsers(sub)
        if leaves:
            found += [((name, leaf), p) for leaf, p in leaves.items()]
        else:
            found.append(((name,), sub))
    return found


COMMANDS = _commands()


INTS = ["0", "-1", "1", "2", "3", "-7", "4294967296", "100000"]
FLOATS = ["nan", "inf", "-inf", "NaN", "0", "-0.0", "-1", "0.5", "1", "1.5", "1e309", "1e-320"]


def _value(draw, action: argparse.Action) -> str:
    choices = list(action.choices) if action.choices else []
    if choices and draw(st.integers(0, 3)) > 0:
        return str(draw(st.sampled_from(choices)))
    if draw(st.integers(0, 7)) == 0:  # now and then anything at all (no NUL: argv cannot hold one)
        pool = HOSTILE + FILES
        if draw(st.booleans()):
            return draw(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6))
        return draw(st.sampled_from(pool))
    if action.type is int:
        return draw(st.sampled_from(INTS))
    if action.type is float or getattr(action.type, "__name__", "") in ("_finite_float", "_float", "_float_or_auto"):
        return draw(st.sampled_from(FLOATS))
    return draw(st.sampled_from(HOSTILE + FILES))


@st.composite
def argvs(draw) -> list[str]:
    path, parser = draw(st.sampled_from(COMMANDS))
    argv = list(path)
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if not action.option_strings:  # positional: usually given, so the command gets past parsing
            count = 1 if action.nargs in (None, "?") else draw(st.integers(1, 2))
            if action.nargs == "?" and draw(st.booleans()):
                continue
            argv += [draw(st.sampled_from(FILES)) for _ in range(count)]
            continue
        if not action.required and draw(st.integers(0, 4)) > 0:  # required ones always, others 1 time in 5
            continue
        argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs == 0:
            continue
        count = 1 if action.nargs in (None, "?") else draw(st.integers(1, 2))
        argv += [_value(draw, action) for _ in range(count)]
    if draw(st.integers(0, 19)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(["--bogus", "-x", "nan"])))
    return argv


def _no_model(*args, **kwargs):
    raise GeomprobeError("model loading is stubbed out in the fuzz test")


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 8)
    acts = {"blocks.0.hook_resid_post": (rng.normal(size=(16, 4)) + labels[:, None]).astype(np.float32)}
    write_cache(base / "good.h5", acts, labels, ["harmless", "harmful"], pair_ids=np.tile(np.arange(8), 2), attrs={"n_layers": 1})
    shutil.copyfile(base / "good.h5", base / "forged.h5")
    with h5py.File(base / "forged.h5", "r+") as f:
        f["labels"][...] = 1 - f["labels"][()]
        del f.attrs[CHECKSUM_ATTR]
    rows = [json.dumps({"text": f"row {i}\u2028more\u0085", "label": i % 2}, ensure_ascii=False) for i in range(6)]
    (base / "u2028.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (base / "deep.jsonl").write_text('{"text": ' + "[" * 50_000 + "]" * 50_000 + ', "label": 0}\n')
    (base / "link.h5").symlink_to(base / "good.h5")
    return base


def _repo_listing() -> set[str]:
    return {p.name for p in REPO.iterdir()} | {f"tests/{p.name}" for p in (REPO / "tests").iterdir()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=argvs())
def test_cli_fuzz(argv, fuzz_base, monkeypatch):
    monkeypatch.setattr(geomprobe.models, "load_model", _no_model)
    monkeypatch.setattr(geomprobe.models.loading, "load_model", _no_model)
    monkeypatch.setattr(geomprobe.models.loading, "load_checkpoint", _no_model)
    if hasattr(geomprobe.models, "load_checkpoint"):
        monkeypatch.setattr(geomprobe.models, "load_checkpoint", _no_model)
    repo_before = _repo_listing()
    home_before = set(os.listdir(fuzz_base))
    with tempfile.TemporaryDirectory(dir=fuzz_base) as run_dir:
        run = Path(run_dir)
        (run / "folder").mkdir()
        (run / "existing.json").write_text("{}\n")
        (run / "notes.txt").write_text("not a cache\n")
        names = {
            "good": str(fuzz_base / "good.h5"),
            "missing": str(run / "missing.h5"),
            "folder": str(run / "folder"),
            "existing": str(run / "existing.json"),
            "text": str(run / "notes.txt"),
            "deep": str(run / "no" / "such"),
            "forged": str(fuzz_base / "forged.h5"),
            "u2028": str(fuzz_base / "u2028.jsonl"),
            "deepjsonl": str(fuzz_base / "deep.jsonl"),
            "link": str(fuzz_base / "link.h5"),
        }
        filled = [token.format(**names) if token in FILES else token for token in argv]
        monkeypatch.chdir(run)
        monkeypatch.setenv("GEOMPROBE_HOME", str(run / "home"))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = geomprobe.cli.main(filled)
            except SystemExit as exc:  # argparse exits itself (usage errors, --help)
                code = exc.code
        monkeypatch.chdir(fuzz_base)
    text = err.getvalue()
    event(f"exit {code}" + (" (usage)" if "usage:" in text else ""))
    assert code in (0, 2), f"exit {code} for {filled}:\n{text}"
    assert "Traceback" not in text, f"traceback for {filled}:\n{text}"
    error_lines = [line for line in text.splitlines() if "error:" in line]
    assert len(error_lines) <= 1, f"{len(error_lines)} error lines for {filled}:\n{text}"
    assert _repo_listing() == repo_before, f"{filled} wrote into the repository"
    assert set(os.listdir(fuzz_base)) == home_before, f"{filled} wrote beside its folder"
    assert Path("/dev/zero").is_char_device() and Path("/dev/null").is_char_device(), f"{filled} replaced a device"
    if code == 0 and str(fuzz_base / "forged.h5") in filled and filled[0] in ("aqi", "probe", "steer", "subspace"):
        assert "--help" in filled or "-h" in filled, f"{filled} read a forged cache and exited 0"
