"""Data-parallel caching: two torchrun ranks on CPU, merged, equal a one-process run bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geomprobe.activations.distributed import Shard, find_shards, launcher_env, parse_shard, rank_device, shard_path, shard_rows
from geomprobe.activations.store import open_cache
from geomprobe.cli import main
from geomprobe.core.errors import GeomprobeError

TORCHRUN = Path(sys.executable).with_name("torchrun")
COMMON = [
    "--dataset",
    "harmful-harmless",
    "--limit",
    "22",
    "--batch-size",
    "4",
    "--hooks",
    "resid_post:0-1",
    "--pooling",
    "last,mean,all",
    "--device",
    "cpu",
    "--quiet",
]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def assert_same_cache(a: Path, b: Path) -> None:
    with open_cache(a) as x, open_cache(b) as y:
        assert x.hooks == y.hooks and x.poolings == y.poolings and x.label_names == y.label_names
        for name in ("labels", "pair_ids", "token_offsets", "token_ids", "response_start", "response_end"):
            assert np.array_equal(getattr(x, name), getattr(y, name)), name
        assert x.texts == y.texts and x.sources == y.sources
        for hook in x.hooks:
            for pooling in x.poolings:
                assert np.array_equal(x.read(hook, pooling), y.read(hook, pooling)), (hook, pooling)


# -- rank detection and row assignment ---------------------------------------------------------
def test_shard_rows_tile_in_whole_batches():
    for n in (0, 1, 7, 22, 100):
        for world in (1, 2, 3, 5):
            for bs in (1, 4):
                spans = [shard_rows(n, r, world, bs) for r in range(world)]
                assert spans[0].start == 0 and spans[-1].stop == n
                for a, b in zip(spans, spans[1:]):
                    assert a.stop == b.start
                    assert a.stop % bs == 0 or a.stop == n  # boundaries fall between batches


def test_parse_shard_and_env():
    assert parse_shard(None) is None
    assert parse_shard("1/4", environ={}) == Shard(1, 4, None)
    assert parse_shard("auto", environ={"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Shard(3, 4, 1)
    assert launcher_env({}) is None
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(GeomprobeError):
            parse_shard(bad, environ={})
    with pytest.raises(GeomprobeError, match="torchrun"):
        parse_shard("auto", environ={})
    assert rank_device("cpu", Shard(0, 2, 1)) == "cpu"  # an explicit device is kept
    assert shard_path("out/cache.h5", 1, 4) == Path("out/cache.rank1-of-4.h5")


def test_find_shards(tmp_path):
    for r in (1, 0):
        shard_path(tmp_path / "c.h5", r, 2).write_bytes(b"")
    (tmp_path / "c.other.h5").write_bytes(b"")
    assert [p.name for p in find_shards(tmp_path / "c.h5")] == ["c.rank0-of-2.h5", "c.rank1-of-2.h5"]


# -- end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def single_run(tiny_llama_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "cache.h5"
    assert main(["cache", "--model", str(tiny_llama_dir), "--out", str(out), *COMMON]) == 0
    return out


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside python")
def test_torchrun_two_ranks_merge_equals_single_process(tiny_llama_dir, single_run, tmp_path):
    out = tmp_path / "cache.h5"
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "geomprobe",
        "cache",
        "--model",
        str(tiny_llama_dir),
        "--out",
        str(out),
        *COMMON,
        "--shard",
        "auto",
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = find_shards(out)
    assert [p.name for p in shards] == ["cache.rank0-of-2.h5", "cache.rank1-of-2.h5"]
    with open_cache(shards[0]) as a, open_cache(shards[1]) as b:
        assert (a.attrs["shard_rows_start"], a.attrs["shard_rows_stop"]) == (0, 12)  # 6 batches of 4 -> 3 + 3
        assert (b.attrs["shard_rows_start"], b.attrs["shard_rows_stop"]) == (12, 22)
        assert a.attrs["n_rows_total"] == 22 and b.attrs["shard_world"] == 2

    assert main(["merge", str(out)]) == 0  # shards found beside OUT
    assert_same_cache(out, single_run)
    with open_cache(out) as merged:
        assert merged.attrs["merge_mode"] == "virtual" and merged.n_prompts == 22
        assert "shard_rank" not in merged.attrs

    copied = tmp_path / "copied.h5"
    assert main(["merge", str(copied), str(tmp_path / "cache.rank*-of-2.h5"), "--copy"]) == 0
    assert_same_cache(copied, single_run)


def test_shard_flag_without_launcher_and_merge_flag(tiny_llama_dir, single_run, tmp_path):
    """--shard R/W runs anywhere (e.g. separate machines); --merge on rank 0 waits then merges."""
    out = tmp_path / "c.h5"
    assert main(["cache", "--model", str(tiny_llama_dir), "--out", str(out), *COMMON, "--shard", "1/2"]) == 0
    assert (
        main(
            [
                "cache",
                "--model",
                str(tiny_llama_dir),
                "--out",
                str(out),
                *COMMON,
                "--shard",
                "0/2",
                "--merge",
                "--merge-timeout",
                "5",
            ]
        )
        == 0
    )
    assert_same_cache(out, single_run)


def test_cli_errors(tmp_path, capsys, monkeypatch):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert main(["cache", "--out", str(tmp_path / "x.h5"), "--shard", "auto"]) == 2
    assert "torchrun" in capsys.readouterr().err
    assert main(["cache", "--out", str(tmp_path / "x.h5"), "--merge"]) == 2
    assert "--shard" in capsys.readouterr().err
    proc = subprocess.run(
        [sys.executable, "-m", "geomprobe", "cache", "--shard", "3/2", "--out", str(tmp_path / "y.h5")],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "out of range" in proc.stderr


# -- one model over several devices (accelerate device_map) --------------------------------------
@pytest.mark.parametrize("device_map", ["auto", {"": "cpu"}])
def test_device_map_load_caches_like_a_plain_load(tiny_llama_dir, tiny_llama, device_map):
    """Only CPU here: checks the accelerate-dispatched path end to end (a real GPU split is not testable)."""
    from geomprobe.activations.collect import pooled_activations
    from geomprobe.activations.datasets import load_prompt_set
    from geomprobe.models import load_model

    mapped = load_model(tiny_llama_dir, device="cpu", device_map=device_map)
    assert mapped.device.type == "cpu" and mapped.extra["device_map"]
    prompts = load_prompt_set("harmful-harmless", limit=6)
    a = pooled_activations(mapped, prompts, "resid_post:0-1", ("last", "mean"), batch_size=3)
    b = pooled_activations(tiny_llama, prompts, "resid_post:0-1", ("last", "mean"), batch_size=3)
    for hook in a:
        for pooling in a[hook]:
            assert np.array_equal(a[hook][pooling], b[hook][pooling])


def test_pooler_moves_its_indices_to_each_layers_device():
    """A hook on another device than the inputs gets the batch's index tensors there (meta stands in)."""
    import torch

    from geomprobe.activations.collect import _Pooler

    pooler = _Pooler(["h"], ["last", "mean", "all"], None)
    pooler.start_batch(torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.tensor([[0, 2], [1, 3]]))
    rows, last, weights, mask = pooler._index(torch.device("meta"))
    assert {t.device.type for t in (rows, last, weights, mask)} == {"meta"}
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    pooler.hook_fn("h")(x)
    assert torch.equal(pooler.results["h"]["last"], x[[0, 1], [1, 2]])
