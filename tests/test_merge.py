"""geomprobe merge: validation, virtual datasets (relative, movable, checksummed), copies, atomic output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geomprobe.activations.merge import check_virtual_sources, merge_shards, open_merged
from geomprobe.activations.store import open_cache, partial_path, write_cache
from geomprobe.cli import main
from geomprobe.core.errors import GeomprobeError


def make_shards(folder: Path, n=(5, 0, 7), d=6, store_dtype="float32", seed=0, override=None):
    """Shards of one synthetic run (rank 1 empty), plus the full arrays they came from."""
    rng = np.random.default_rng(seed)
    total = sum(n)
    X = {h: rng.normal(size=(total, d)).astype(np.float32) for h in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")}
    y = rng.integers(0, 2, total)
    texts = [f"prompt {i}" for i in range(total)]
    paths, start = [], 0
    for rank, rows in enumerate(n):
        attrs = {
            "shard_rank": rank,
            "shard_world": len(n),
            "shard_rows_start": start,
            "shard_rows_stop": start + rows,
            "n_rows_total": total,
            "dataset_sha256": "abc",
            "host": f"node{rank}",
        }
        attrs.update((override or {}).get(rank, {}))
        sl = slice(start, start + rows)
        path = folder / f"c.rank{rank}-of-{len(n)}.h5"
        write_cache(
            path,
            {h: {"last": v[sl], "mean": 2 * v[sl]} for h, v in X.items()},
            y[sl],
            ["a", "b"],
            texts=texts[sl],
            pair_ids=np.arange(total)[sl],
            attrs=attrs,
            store_dtype=store_dtype,
        )
        paths.append(path)
        start += rows
    return paths, X, y, texts


@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize("store_dtype", ["float32", "bfloat16"])
def test_merge_equals_concatenation(tmp_path, copy, store_dtype):
    paths, X, y, texts = make_shards(tmp_path, store_dtype=store_dtype)
    out = tmp_path / "c.h5"
    result = merge_shards(out, paths[::-1], copy=copy)  # any order in, row order out
    assert result.n_prompts == 12 and not partial_path(out).exists()
    with open_cache(out) as m, open_cache(paths[0]) as s0:
        assert m.n_prompts == 12 and m.labels.tolist() == y.tolist() and m.texts == texts
        assert m.pair_ids.tolist() == list(range(12))
        assert np.array_equal(m.token_offsets, np.zeros(13))
        for hook, v in X.items():
            expected = np.concatenate([s0.read(hook, "last"), open_cache(paths[2]).read(hook, "last")])
            assert np.array_equal(m.read(hook, "last"), expected)
            assert np.array_equal(m.read(hook, "mean", rows=np.array([11, 0, 5])), expected[[11, 0, 5]] * 2)
            if store_dtype == "float32":
                assert np.array_equal(m.read(hook, "last"), v)
        assert m.attrs["merge_mode"] == ("copy" if copy else "virtual")
        assert m.attrs["merged_hosts"] == '["node0", "node1", "node2"]'
        assert "shard_rank" not in m.attrs and m.attrs["complete"]
        ds = m.file[f"activations/{m.hooks[0]}/last"]
        assert ds.is_virtual != copy
        if copy:
            assert ds.fletcher32


def test_virtual_merge_moves_with_its_shards_and_detects_missing_ones(tmp_path):
    (tmp_path / "a").mkdir()
    paths, X, _, _ = make_shards(tmp_path / "a")
    merge_shards(tmp_path / "a" / "c.h5", paths)
    shutil.move(tmp_path / "a", tmp_path / "b")  # relative sources: the folder moves as a whole
    moved = tmp_path / "b" / "c.h5"
    assert check_virtual_sources(moved) == []
    with open_merged(moved) as m:
        assert np.array_equal(m.read("blocks.1.hook_resid_post"), X["blocks.1.hook_resid_post"])
    (tmp_path / "b" / "c.rank2-of-3.h5").unlink()
    assert check_virtual_sources(moved) == ["c.rank2-of-3.h5"]
    with pytest.raises(GeomprobeError, match="missing"):
        open_merged(moved)
    with pytest.raises(GeomprobeError, match="shard c.rank2-of-3.h5 which is missing"):
        open_cache(moved)  # the plain reader checks the sources too, rather than reading fill values


def test_fletcher32_checksums_hold_through_virtual_datasets(tmp_path):
    paths, X, _, _ = make_shards(tmp_path, n=(40, 40), d=64)
    out = tmp_path / "c.h5"
    merge_shards(out, paths)
    with open_cache(paths[1]) as s:
        ds = s.file["activations/blocks.0.hook_resid_post/last"]
        assert ds.fletcher32
        offset = ds.id.get_chunk_info_by_coord((0, 0)).byte_offset
    with open_cache(out) as m:
        assert np.array_equal(m.read("blocks.0.hook_resid_post"), X["blocks.0.hook_resid_post"])
    with open(paths[1], "r+b") as handle:  # flip bytes inside shard 1's first chunk
        handle.seek(offset + 16)
        handle.write(b"\xff\xff\xff\xff")
    with open_cache(out) as m:
        with pytest.raises(GeomprobeError, match="corrupted"):
            m.read("blocks.0.hook_resid_post")
        assert np.array_equal(m.read("blocks.0.hook_resid_post", rows=slice(0, 40)), X["blocks.0.hook_resid_post"][:40])
    with pytest.raises(GeomprobeError, match="corrupted"):
        merge_shards(tmp_path / "copy.h5", paths, copy=True)
    assert not (tmp_path / "copy.h5").exists() and not partial_path(tmp_path / "copy.h5").exists()


@pytest.mark.parametrize(
    "override, paths_slice, match",
    [
        ({1: {"model_id": "other"}}, slice(None), "differ in model_id"),
        ({1: {"dataset_sha256": "zzz"}}, slice(None), "dataset_sha256"),
        ({}, slice(0, 2), "missing"),
        ({2: {"shard_rows_start": 6, "shard_rows_stop": 13}}, slice(None), "do not tile|holds"),
    ],
)
def test_validation(tmp_path, override, paths_slice, match):
    paths, *_ = make_shards(tmp_path, override=override)
    with pytest.raises(GeomprobeError, match=match):
        merge_shards(tmp_path / "c.h5", paths[paths_slice])
    assert not (tmp_path / "c.h5").exists()


def test_refuses_non_shards_and_duplicates(tmp_path):
    plain = write_cache(tmp_path / "plain.h5", {"blocks.0.hook_resid_post": np.ones((3, 2))}, [0, 1, 0])
    with pytest.raises(GeomprobeError, match="not a shard"):
        merge_shards(tmp_path / "m.h5", [plain])
    paths, *_ = make_shards(tmp_path)
    with pytest.raises(GeomprobeError, match="twice"):
        merge_shards(tmp_path / "m.h5", [paths[0], paths[0], paths[1], paths[2]])
    merge_shards(tmp_path / "m.h5", paths)
    with pytest.raises(GeomprobeError, match="already exists"):
        merge_shards(tmp_path / "m.h5", paths)
    merge_shards(tmp_path / "m.h5", paths, copy=True, overwrite=True)


def test_cli(tmp_path, capsys):
    paths, X, _, _ = make_shards(tmp_path)
    assert main(["merge", str(tmp_path / "c.h5"), str(tmp_path / "c.rank*.h5"), "--copy"]) == 0
    assert "merged 3 shards, 12 prompts" in capsys.readouterr().out
    assert main(["merge", str(tmp_path / "none.h5")]) == 2
    assert "no shard files" in capsys.readouterr().err
    proc = subprocess.run(
        [sys.executable, "-m", "geomprobe", "merge", str(tmp_path / "x.h5"), str(tmp_path / "nope*.h5")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "matches no file" in proc.stderr


def test_copy_merge_refuses_a_disk_too_small_before_writing(tmp_path, monkeypatch):
    import shutil as shutil_module

    paths = make_shards(tmp_path)[0]
    real = shutil_module.disk_usage
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: real(p)._replace(free=1024))
    with pytest.raises(GeomprobeError, match="disk full while writing") as err:
        merge_shards(tmp_path / "copy.h5", paths, copy=True)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # nothing written
    merge_shards(tmp_path / "virtual.h5", paths)  # a virtual merge copies nothing: no space needed
