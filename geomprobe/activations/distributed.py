"""Data-parallel caching without a scheduler: which rows this process caches, and where it writes.

Each rank of a ``torchrun`` (or ``accelerate launch``) job caches one contiguous range of the
prompt set into its own complete cache file ``OUT.rank{R}-of-{W}.h5``; ``geomprobe merge`` joins
them afterwards. Ranks never talk to each other (no process group, no collectives), so a rank
that dies is simply rerun (it resumes like any cache) and shards may even be cached on
different machines or at different times.

Ranges are whole batches: rank ``r`` of ``W`` gets batches ``[r*B/W, (r+1)*B/W)`` of the ``B``
batches of the set, so every batch is exactly the batch a one-process run feeds the model and
the merged file is bit-identical to a one-process cache with the same ``--batch-size``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from geomprobe.core.errors import GeomprobeError

_SHARD_NAME = re.compile(r"\.rank(\d+)-of-(\d+)$")


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``world`` data-parallel workers (``local_rank``: GPU index on its node)."""

    rank: int
    world: int
    local_rank: int | None = None

    def rows(self, n_rows: int, batch_size: int = 1) -> range:
        return shard_rows(n_rows, self.rank, self.world, batch_size)

    def path(self, out: str | Path) -> Path:
        return shard_path(out, self.rank, self.world)

    @property
    def label(self) -> str:
        return f"{self.rank}/{self.world}"


def launcher_env(environ: dict[str, str] | None = None) -> Shard | None:
    """The rank set by torchrun / accelerate launch (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), if any."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env["LOCAL_RANK"]) if env.get("LOCAL_RANK", "") != "" else None
    except ValueError:
        raise GeomprobeError(
            f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r} are not integers; check the launcher's environment"
        ) from None
    return _checked(rank, world, local)


def _checked(rank: int, world: int, local: int | None = None) -> Shard:
    if world < 1 or not 0 <= rank < world:
        raise GeomprobeError(f"shard {rank}/{world} is out of range; rank must be 0..WORLD-1 and WORLD at least 1")
    return Shard(rank, world, local)


def parse_shard(spec: str | None, environ: dict[str, str] | None = None) -> Shard | None:
    """``"auto"`` (the launcher's RANK/WORLD_SIZE), ``"R/W"`` (e.g. ``"0/4"``) or None (no sharding)."""
    if spec is None:
        return None
    spec = spec.strip()
    if spec == "auto":
        found = launcher_env(environ)
        if found is None:
            raise GeomprobeError(
                "--shard auto needs RANK and WORLD_SIZE from torchrun or accelerate launch; "
                "run under the launcher or pass --shard R/W"
            )
        return found
    match = re.fullmatch(r"(\d+)\s*/\s*(\d+)", spec)
    if not match:
        raise GeomprobeError(f"--shard {spec!r} is not understood; use auto or RANK/WORLD such as 0/4")
    env = launcher_env(environ)
    return _checked(int(match.group(1)), int(match.group(2)), env.local_rank if env else None)


def shard_rows(n_rows: int, rank: int, world: int, batch_size: int = 1) -> range:
    """Contiguous rows of rank ``rank``: whole batches of ``batch_size``, split as evenly as possible."""
    _checked(rank, world)
    batch_size = max(1, int(batch_size))
    n_batches = -(-n_rows // batch_size)
    first = rank * n_batches // world
    last = (rank + 1) * n_batches // world
    return range(min(n_rows, first * batch_size), min(n_rows, last * batch_size))


def shard_path(out: str | Path, rank: int, world: int) -> Path:
    """``cache.h5`` -> ``cache.rank0-of-4.h5`` (same folder)."""
    out = Path(out)
    suffix = out.suffix or ".h5"
    return out.with_name(f"{out.stem if out.suffix else out.name}.rank{rank}-of-{world}{suffix}")


def shard_paths(out: str | Path, world: int) -> list[Path]:
    return [shard_path(out, r, world) for r in range(world)]


def find_shards(out: str | Path) -> list[Path]:
    """Shard files written for ``out`` (any world size), sorted by rank."""
    out = Path(out)
    suffix = out.suffix or ".h5"
    stem = out.stem if out.suffix else out.name
    found = []
    for path in out.parent.glob(f"{glob_escape(stem)}.rank*-of-*{suffix}"):
        match = _SHARD_NAME.search(path.name[: -len(suffix)])
        if match:
            found.append((int(match.group(2)), int(match.group(1)), path))
    return [p for _, _, p in sorted(found)]


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def rank_device(device: str | None, shard: Shard | None) -> str | None:
    """Under a launcher with CUDA present, ``auto`` means this rank's own GPU ``cuda:LOCAL_RANK``."""
    if shard is None or shard.local_rank is None or device not in (None, "auto"):
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    return device


def wait_for_files(paths: Sequence[Path], *, timeout: float, poll: float = 2.0, progress=None) -> None:
    """Wait until every path exists (shards are published by an atomic rename, so existing = complete)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [p for p in paths if not Path(p).exists()]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise GeomprobeError(
                f"{len(missing)} shard(s) still missing after {timeout:.0f} s (first: {missing[0]}); "
                "rerun the failed ranks, then run geomprobe merge"
            )
        if progress is not None:
            progress(missing)
        time.sleep(poll)
