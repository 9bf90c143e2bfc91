"""Join the shard files of a data-parallel cache run into one cache file, prompt order preserved.

Two modes:

- **virtual** (default): every per-row dataset of the output is an HDF5 virtual dataset mapping
  onto the shards' datasets, so nothing is copied and the merge takes seconds for any size.
  Sources are stored as paths *relative to the output's folder*: the output and its shards may
  move together, but the shards must stay beside it (HDF5 would silently read fill values for
  a missing shard; :func:`check_virtual_sources` catches that, and activations fill with NaN).
  Only ``/prompts/token_offsets`` is a real dataset, re-based onto the joined token axis.
- **copy**: a self-contained file with the shards' chunking, fletcher32 checksums and storage
  dtype, written block by block (never a whole dataset in memory).

Both validate that the shards come from one run (model, revision, dtype, hooks, poolings,
d_model, labels, dataset SHA-256, storage dtype, chat template) and cover the prompt set
contiguously and completely; the output is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from geomprobe.activations.format import CHECKSUM_ATTR, compute_checksums
from geomprobe.activations.store import CacheFile, check_virtual_sources
from geomprobe.activations.writer import CACHE_EXAMPLE_NAME, partial_path
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import atomic_file, check_free_space, check_output_file

# Must agree between shards for the merge to mean anything.
MATCH_ATTRS = (
    "model_id",
    "model_revision",
    "model_dtype",
    "hooks",
    "poolings",
    "d_model",
    "label_names",
    "dataset_sha256",
    "store_dtype",
    "chat_template_applied",
    "n_rows_total",
    "shard_world",
    "format_version",
)
SHARD_ATTRS = ("shard_rank", "shard_rows_start", "shard_rows_stop", "host")
ROW_DATASETS = (
    "labels",
    "pair_ids",
    "prompts/text",
    "prompts/source",
    "prompts/n_tokens",
    "prompts/response_start",
    "prompts/response_end",
)
MODES = ("virtual", "copy")
_COPY_BYTES = 64 << 20


@dataclass
class MergeResult:
    path: Path
    mode: str
    n_prompts: int
    n_tokens: int
    shards: list[Path]
    seconds: float

    def closing_line(self) -> str:
        how = "virtual datasets over the shards (keep them beside it)" if self.mode == "virtual" else "a self-contained copy"
        return (
            f"merged {len(self.shards)} shards, {self.n_prompts} prompts, {self.n_tokens} tokens into {self.path} "
            f"as {how} in {self.seconds:.1f} s"
        )


@dataclass
class _ShardInfo:
    path: Path
    rank: int
    start: int
    stop: int
    n_prompts: int
    n_tokens: int
    attrs: dict[str, Any]


def _scan(paths: Sequence[str | Path]) -> list[_ShardInfo]:
    if not paths:
        raise GeomprobeError("no shard files given; pass OUT.rank*-of-*.h5 files (or a glob) after the output name")
    infos = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.resolve() in seen:
            raise GeomprobeError(f"shard {path} is given twice; pass each shard once")
        seen.add(path.resolve())
        with CacheFile(path) as cache:
            attrs = dict(cache.attrs)
            if attrs.get("merge_mode"):
                raise GeomprobeError(f"{path} is already a merged cache; pass the shard files it was made from")
            if "shard_rank" not in attrs:
                raise GeomprobeError(
                    f"{path} is not a shard (no shard_rank attribute); create shards with geomprobe cache --shard"
                )
            n_tokens = int(cache.file["prompts/token_offsets"][-1]) if cache.n_prompts else 0
            infos.append(
                _ShardInfo(
                    path,
                    int(attrs["shard_rank"]),
                    int(attrs["shard_rows_start"]),
                    int(attrs["shard_rows_stop"]),
                    cache.n_prompts,
                    n_tokens,
                    attrs,
                )
            )
    return infos


def validate_shards(paths: Sequence[str | Path]) -> list[_ShardInfo]:
    """Shards in row order, after checking they come from one run and cover every row once."""
    infos = _scan(paths)
    first = infos[0]
    for info in infos[1:]:
        for key in MATCH_ATTRS:
            a, b = first.attrs.get(key), info.attrs.get(key)
            if str(a) != str(b):
                raise GeomprobeError(
                    f"shards {first.path.name} and {info.path.name} differ in {key} ({a!r} vs {b!r}); "
                    "merge only shards of one geomprobe cache run"
                )
    world = int(first.attrs["shard_world"])
    total = int(first.attrs["n_rows_total"])
    ranks = sorted(i.rank for i in infos)
    if ranks != list(range(world)):
        missing = sorted(set(range(world)) - set(ranks))
        extra = [r for r in set(ranks) if ranks.count(r) > 1]
        problem = f"rank(s) {', '.join(map(str, missing))} missing" if missing else f"rank {extra[0]} given twice"
        raise GeomprobeError(f"shards of a {world}-rank run: {problem}; pass all {world} shard files")
    infos.sort(key=lambda i: (i.start, i.stop, i.rank))
    expected = 0
    for info in infos:
        if info.start != expected:
            raise GeomprobeError(
                f"shard {info.path.name} starts at row {info.start} but the previous shard ends at {expected}; "
                "the shards do not tile the prompt set (recreate the missing rows)"
            )
        if info.n_prompts != info.stop - info.start:
            raise GeomprobeError(
                f"shard {info.path.name} holds {info.n_prompts} rows, not its range {info.start}-{info.stop}; recreate it"
            )
        expected = info.stop
    if expected != total:
        raise GeomprobeError(f"the shards cover {expected} of {total} rows; recreate the missing shards")
    return infos


def _relative(source: Path, out_dir: Path) -> str:
    return os.path.relpath(source.resolve(), out_dir.resolve())


def _fill_for(ds: h5py.Dataset) -> float | np.uint16 | None:
    """NaN where a missing shard would leave a hole in activations (never a plausible number)."""
    if ds.dtype.kind == "f":
        return np.nan
    if ds.attrs.get("stored_as") == "bfloat16":
        return np.uint16(0x7FC0)  # bfloat16 NaN pattern
    return None


def _copy_attrs(src: h5py.AttributeManager, dst: h5py.AttributeManager) -> None:
    for key, value in src.items():
        dst[key] = value


def merge_shards(
    out: str | Path,
    shards: Sequence[str | Path],
    *,
    copy: bool = False,
    overwrite: bool = False,
) -> MergeResult:
    """Join ``shards`` (any order) into the cache file ``out``; see the module docs for the modes."""
    started = time.perf_counter()
    out = check_output_file(out, overwrite=overwrite, example_name=CACHE_EXAMPLE_NAME)
    infos = validate_shards(shards)
    if any(i.path.resolve() == out.resolve() for i in infos):
        raise GeomprobeError(f"output {out} is one of the shards; choose another output name")
    mode = "copy" if copy else "virtual"
    n_rows = sum(i.n_prompts for i in infos)
    n_tokens = sum(i.n_tokens for i in infos)
    if copy:  # HDF5 handles a full disk badly: refuse before writing when the copy cannot fit
        check_free_space(out.parent, sum(i.path.stat().st_size for i in infos), out, retry="rerun geomprobe merge")
    handles = [h5py.File(i.path, "r") for i in infos]
    try:
        with atomic_file(out, temp=partial_path(out), retry="rerun geomprobe merge") as tmp, h5py.File(tmp, "w") as dst:
            ref = handles[0]
            _copy_attrs(ref.attrs, dst.attrs)
            for key in SHARD_ATTRS:
                if key in dst.attrs:
                    del dst.attrs[key]
            dst.attrs["complete"] = False
            ref.copy(ref["label_names"], dst, "label_names")
            names = list(ROW_DATASETS) + ["prompts/token_ids"]
            names += [f"activations/{h}/{p}" for h in json.loads(ref.attrs["hooks"]) for p in json.loads(ref.attrs["poolings"])]
            for name in names:
                per_token = name == "prompts/token_ids" or name.endswith("/all")
                lengths = [i.n_tokens if per_token else i.n_prompts for i in infos]
                if mode == "virtual":
                    _virtual(dst, name, handles, infos, lengths, out.parent)
                else:
                    _copied(dst, name, handles, lengths)
            offsets = np.zeros(n_rows + 1, dtype=np.int64)
            row, base = 0, 0
            for handle, info in zip(handles, infos):
                part = handle["prompts/token_offsets"][:]
                offsets[row + 1 : row + 1 + info.n_prompts] = part[1:] + base
                row += info.n_prompts
                base += info.n_tokens
            dst.create_dataset("prompts/token_offsets", data=offsets, maxshape=(None,), chunks=(min(4096, len(offsets)),))
            dst.attrs[CHECKSUM_ATTR] = compute_checksums(*handles)  # each shard's own digests cover its rows only
            dst.attrs.update(
                {
                    "merge_mode": mode,
                    "merged_from": json.dumps([_relative(i.path, out.parent) for i in infos]),
                    "merged_hosts": json.dumps(sorted({str(i.attrs.get("host", "")) for i in infos} - {""})),
                    "merged_ranks": json.dumps([i.rank for i in infos]),
                    "merged_utc": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                    "n_prompts": n_rows,
                    "n_tokens": n_tokens,
                    "complete": True,
                }
            )
    finally:
        for handle in handles:
            handle.close()
    return MergeResult(out, mode, n_rows, n_tokens, [i.path for i in infos], time.perf_counter() - started)


def _virtual(dst: h5py.File, name: str, handles, infos, lengths, out_dir: Path) -> None:
    src0 = handles[0][name]
    tail = src0.shape[1:]
    layout = h5py.VirtualLayout(shape=(sum(lengths),) + tail, dtype=src0.dtype)
    at = 0
    for info, n in zip(infos, lengths):
        if n:
            layout[at : at + n] = h5py.VirtualSource(_relative(info.path, out_dir), name, shape=(n,) + tail)
        at += n
    ds = dst.create_virtual_dataset(name, layout, fillvalue=_fill_for(src0))
    _copy_attrs(src0.attrs, ds.attrs)


def _copied(dst: h5py.File, name: str, handles, lengths) -> None:
    src0 = handles[0][name]
    tail = src0.shape[1:]
    total = sum(lengths)
    chunks = src0.chunks
    if chunks is not None:
        chunks = (max(1, min(chunks[0], total)),) + tuple(chunks[1:])
    ds = dst.create_dataset(
        name,
        shape=(total,) + tail,
        maxshape=(None,) + tail,
        dtype=src0.dtype,
        chunks=chunks or True,
        fletcher32=src0.fletcher32 and total > 0,
        compression=src0.compression,
        compression_opts=src0.compression_opts,
    )
    _copy_attrs(src0.attrs, ds.attrs)
    row_bytes = max(1, int(np.prod(tail, dtype=np.int64)) * src0.dtype.itemsize)
    step = max(1, _COPY_BYTES // row_bytes)
    at = 0
    for handle, n in zip(handles, lengths):
        src = handle[name]
        for s in range(0, n, step):
            e = min(n, s + step)
            try:
                ds[at + s : at + e] = src[s:e]
            except OSError:
                raise GeomprobeError(
                    f"{handle.filename} is corrupted at {name} (checksum mismatch); recreate that shard and merge again"
                ) from None
        at += n


def open_merged(path: str | Path) -> CacheFile:
    """Open a cache, refusing a virtual merge whose shards have gone missing."""
    missing = check_virtual_sources(path)
    if missing:
        raise GeomprobeError(
            f"merged cache {path} reads from shard {missing[0]} which is missing; put the shards back beside it "
            "or rerun geomprobe merge --copy"
        )
    return CacheFile(path)
