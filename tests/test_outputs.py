"""All outputs of a command checked together, before any work (issue 21, part 4): distinct from each
other and from the inputs, owned files in a folder refused without --overwrite, known extensions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import geomprobe.cli
from geomprobe.activations.store import write_cache
from geomprobe.audit.pipeline import AUDIT_FILES
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import PLOT_SUFFIXES, Output, check_outputs

HOOK = "blocks.0.hook_resid_post"


def _tree(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def cache(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 10)
    return write_cache(
        tmp_path / "c.h5",
        {HOOK: (rng.normal(size=(20, 8)) + labels[:, None]).astype(np.float32)},
        labels,
        ["harmless", "harmful"],
        pair_ids=np.tile(np.arange(10), 2),
    )


def _cli_error(argv, capsys) -> str:
    assert geomprobe.cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geomprobe: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["aqi", "{c}", "--json", "{t}/x", "--plot", "{t}/x"], "would write the same file"),
        (["aqi", "{c}", "--json", "{t}/x.png", "--plot", "{t}/./x.png"], "would write the same file"),
        (["aqi", "{c}", "--json", "{c}", "--overwrite"], "would overwrite the input"),
        (["aqi", "{c}", "--plot", "{t}/x.bmpx"], "extension '.bmpx'"),
        (["subspace", "acts", "{c}", "--plot", "{t}/x.txt"], "extension '.txt'"),
        (["steer", "screen", "{c}", "--json", "{t}/s", "--plot", "{t}/s"], "would write the same file"),
        (["steer", "screen", "{c}", "--plot", "{c}", "--overwrite"], "would overwrite the input"),
        (["probe", "train", "{c}", "--out", "{t}/p", "--json", "{t}/p/probe.json"], "would write the same file"),
        (["probe", "eval", "{t}/p", "{c}", "--no-control", "--json", "{c}", "--overwrite"], "would overwrite the input"),
    ],
)
def test_outputs_checked_together(argv, expect, cache, tmp_path, capsys):
    before = _tree(tmp_path)
    err = _cli_error([a.format(c=cache, t=tmp_path) for a in argv], capsys)
    assert expect in err, err
    assert _tree(tmp_path) == before


def test_audit_refuses_a_users_report_without_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("<p>my own notes</p>")
    (out / "notes.txt").write_text("not the audit's")
    err = _cli_error(["audit", "--model", "default", "--out", out, "--quick"], capsys)
    assert "already holds report.html, which this command writes" in err
    assert (out / "report.html").read_text() == "<p>my own notes</p>"
    # a file the audit does not write is no obstacle; an empty folder under an owned name neither
    (out / "report.html").unlink()
    (out / "caches").mkdir()
    assert check_outputs([Output(out, "--out", "folder", holds="metrics.json", owns=AUDIT_FILES)], overwrite=False) == [out]
    (out / "layers.png").write_bytes(b"png")
    with pytest.raises(GeomprobeError, match="already holds layers.png"):
        check_outputs([Output(out, "--out", "folder", holds="metrics.json", owns=AUDIT_FILES)], overwrite=False)


def test_check_outputs_rules(tmp_path):
    (tmp_path / "in.h5").write_bytes(b"data")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "p").mkdir()
    whole = Output(tmp_path / "proj", "--out", "folder")
    owned = Output(tmp_path / "p", "--out", "folder", holds="probe.json", owns=("probe.json", "probe.safetensors"))
    # distinct: a file inside a folder written whole collides; beside an owned folder's files it does not
    with pytest.raises(GeomprobeError, match="--out .* and --json .* would write the same file"):
        check_outputs([whole, Output(tmp_path / "proj" / "x.json", "--json")], overwrite=True)
    assert (
        check_outputs([owned, Output(tmp_path / "p" / "eval.json", "--json")], overwrite=False)[1] == tmp_path / "p" / "eval.json"
    )
    with pytest.raises(GeomprobeError, match="would write the same file"):
        check_outputs([owned, Output(tmp_path / "p" / "probe.safetensors", "--json")], overwrite=True)
    # inputs: never replaced, even with overwrite; nor an existing file inside an input folder
    with pytest.raises(GeomprobeError, match="would overwrite the input"):
        check_outputs([Output(tmp_path / "in.h5", "--json")], inputs=[tmp_path / "in.h5"], overwrite=True)
    with pytest.raises(GeomprobeError, match="would overwrite the input"):
        check_outputs([Output(tmp_path / "model" / "config.json", "--json")], inputs=[tmp_path / "model"], overwrite=True)
    with pytest.raises(GeomprobeError, match="would overwrite the input"):
        check_outputs([Output(tmp_path, "--out", "folder")], inputs=[tmp_path / "in.h5"], overwrite=True)
    # a symlink to an input is the input
    (tmp_path / "link.h5").symlink_to(tmp_path / "in.h5")
    with pytest.raises(GeomprobeError, match="would overwrite the input"):
        check_outputs([Output(tmp_path / "link.h5", "--json")], inputs=[tmp_path / "in.h5"], overwrite=True)
    # extensions
    for suffix in PLOT_SUFFIXES:
        assert check_outputs([Output(tmp_path / f"a{suffix}", "--plot", suffixes=PLOT_SUFFIXES)], overwrite=False)
    with pytest.raises(GeomprobeError, match="has no extension; use one of .jsonl"):
        check_outputs([Output(tmp_path / "deception", "--out", suffixes=(".jsonl",))], overwrite=False)
    # not asked for: None passes through
    assert check_outputs([Output(None, "--json"), owned], overwrite=False) == [None, tmp_path / "p"]


def test_save_figure_refuses_an_unknown_extension(tmp_path):
    from geomprobe.plots._style import new_figure, save_figure

    fig, _ = new_figure()
    with pytest.raises(GeomprobeError, match=r"extension '\.xyz'; use one of \.png"):
        save_figure(fig, tmp_path / "plot.xyz")
    assert list(tmp_path.iterdir()) == []
    fig, _ = new_figure()
    assert save_figure(fig, tmp_path / "plot").read_bytes()[:4] == b"\x89PNG"
