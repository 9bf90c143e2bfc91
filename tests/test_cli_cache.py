import subprocess
import sys

import numpy as np

import geomprobe
from geomprobe.cli import main


def test_cache_cli_writes_file_and_summaries(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "c.h5"
    code = main(
        [
            "cache",
            "--model",
            str(tiny_llama_dir),
            "--dataset",
            "control",
            "--limit",
            "6",
            "--out",
            str(out),
            "--hooks",
            "resid_post",
            "--pooling",
            "last,all",
            "--device",
            "cpu",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "blocks.1.hook_resid_post" in text and "wrote 6 prompts" in text and str(out) in text
    with geomprobe.open_cache(out) as cache:
        assert cache.poolings == ["last", "all"] and cache.n_prompts == 6
        assert cache.read("blocks.0.hook_resid_post", "all").shape[0] == cache.token_offsets[-1]


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "geomprobe", *args], capture_output=True, text=True, cwd=cwd)


def test_cache_cli_bad_inputs_exit_2_without_traceback(tiny_llama_dir, tmp_path):
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "ok", "label": 1}\n{"text": oops}\n')
    single = tmp_path / "one.jsonl"
    single.write_text('{"text": "ok", "label": 1}\n')
    existing = tmp_path / "exists.h5"
    existing.write_bytes(b"keep me")
    model = ["--model", str(tiny_llama_dir), "--device", "cpu"]
    cases = [
        (["cache", *model, "--dataset", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "a.h5")], "neither a bundled"),
        (["cache", *model, "--dataset", "nonsense", "--out", str(tmp_path / "a.h5")], "bundled name"),
        (["cache", *model, "--dataset", str(bad_jsonl), "--out", str(tmp_path / "a.h5")], "line 2"),
        (["cache", *model, "--hooks", "resid_post:7", "--out", str(tmp_path / "a.h5")], "out of range"),
        (["cache", *model, "--hooks", "resid_sideways", "--out", str(tmp_path / "a.h5")], "unknown hook"),
        (["cache", *model, "--out", str(existing)], "--overwrite"),
        (["cache", "--model", str(tmp_path), "--out", str(tmp_path / "a.h5")], "not a model folder"),
        (["cache", *model, "--out", str(tmp_path / "no" / "dir" / "a.h5")], "does not exist"),
    ]
    for args, message in cases:
        proc = _run(args, tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "a.h5").exists()


def test_default_output_goes_to_activations_folder(tiny_llama_dir, tmp_path):
    proc = _run(["cache", "--model", str(tiny_llama_dir), "--device", "cpu", "--limit", "4", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = list((tmp_path / "activations").glob("*.h5"))
    assert len(files) == 1 and files[0].name.startswith("harmful-harmless--")
    assert np.isfinite(geomprobe.read_activations(files[0], "blocks.0.hook_resid_post", "mean")).all()
