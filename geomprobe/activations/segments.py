"""Crash-safe, resumable cache writing.

A run writes its output ``OUT`` as numbered segment files in ``.OUT.parts/`` beside it, each a
complete small cache file published by an atomic rename, plus a ``manifest.json`` with the
settings that produced them. When every row is written the segments are copied, in order, into
``.OUT.partial``, which is renamed to ``OUT``; only then is the parts folder removed.

So a crash (``kill -9`` included) at any moment loses at most the segment being written: the
same command run again checks that its settings match the manifest, skips the rows already in
complete segments and carries on. Segments hold whole batches, so a resumed run feeds the model
exactly the batches an uninterrupted run would and its arrays are bit-for-bit the same.

Two runs writing one output would interleave their segments, so a run holds an exclusive
``flock`` on ``.OUT.parts/lock`` (with its pid inside) from start to finish; a second run is
refused at once. The kernel drops the lock when the holder dies, so ``kill -9`` leaves no stale lock.
Before each segment and before the final copy the free disk space is checked: HDF5 reports a
full disk from destructors and can crash at exit, so the run stops cleanly before it gets there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from geomprobe.activations.store import CacheFile
from geomprobe.activations.writer import CACHE_EXAMPLE_NAME, CacheWriter
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import (
    atomic_write_text,
    check_free_space,
    check_output_file,
    remove_quietly,
    translate_write_errors,
    write_error,
)

MANIFEST = "manifest.json"
LOCK = "lock"
# Room kept free beyond the estimate: HDF5 metadata, chunk rounding, the file system's own needs.
SPACE_MARGIN = 4 << 20
_SEGMENT = re.compile(r"^seg-(\d{9})-(\d{9})\.h5$")


def parts_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.parts")


# How to carry on after a write error: the finished segments are kept, so a rerun resumes.
RESUME = "rerun the same command to resume (finished parts are kept)"


def _busy_error(path: Path, lock_file: Path) -> GeomprobeError:
    try:
        pid = lock_file.read_text().strip() or "unknown"
    except OSError:
        pid = "unknown"
    return GeomprobeError(
        f"another geomprobe run is writing {str(path)!r} (pid {pid}); wait for it or stop it, or choose another --out"
    )


class PartsLock:
    """An exclusive, non-blocking ``flock`` on ``.OUT.parts/lock``; the file records the holder's pid."""

    def __init__(self, path: Path, parts: Path) -> None:
        self.path = path
        self.file = parts / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _busy_error(self.path, self.file) from None
            raise
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is only a courtesy for the message; the lock is what matters

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def check_not_busy(path: str | Path) -> None:
    """Refuse at once when another run holds the parts lock of ``path`` (called before a model load)."""
    path = Path(path)
    lock_file = parts_dir(path) / LOCK
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return  # no parts folder or no lock: nobody is writing
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _busy_error(path, lock_file) from None
    finally:
        os.close(fd)  # closing drops a lock taken here


class ResumableWriter:
    """Write ``n_rows`` rows as segments of ``segment_rows`` (a multiple of the batch size).

    ``settings`` identify the run (model, revision, hooks, poolings, dataset rows, dtypes, batch
    size...); a partial run with other settings is refused with the differing keys named.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n_rows: int,
        segment_rows: int,
        settings: Mapping[str, Any],
        writer_kwargs: Mapping[str, Any],
        overwrite: bool = False,
        restart: bool = False,
    ) -> None:
        self.path = check_output_file(path, overwrite=overwrite, example_name=CACHE_EXAMPLE_NAME)
        self.n_rows = int(n_rows)
        self.segment_rows = max(1, int(segment_rows))
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        self.writer_kwargs = dict(writer_kwargs)
        self.parts = parts_dir(self.path)
        self.current: CacheWriter | None = None
        self.current_start = 0
        self.lock = PartsLock(self.path, self.parts)
        created = not self.parts.exists()
        try:
            self.parts.mkdir(exist_ok=True)
            self.lock.acquire()
        except OSError as exc:
            if created:
                shutil.rmtree(self.parts, ignore_errors=True)
            raise write_error(exc, self.parts, RESUME) from None
        try:
            if restart:
                for entry in self.parts.iterdir():
                    if entry.name != LOCK:
                        remove_quietly(entry)
            self._check_manifest()
            self.segments = self._complete_segments()
        except BaseException as exc:
            if created:  # a folder this run made holds nothing worth resuming
                shutil.rmtree(self.parts, ignore_errors=True)
            self.lock.release()
            if isinstance(exc, OSError):
                raise write_error(exc, self.parts, RESUME) from None
            raise
        self.start_row = self.segments[-1][1] if self.segments else 0

    # -- state on disk ----------------------------------------------------------------------
    def _check_manifest(self) -> None:
        """Resume only parts whose manifest says they came from these settings.

        A manifest that cannot be read, or parts without one, cannot show which dataset or model
        made them, so the run stops (treating them as "no manifest" would reuse another run's rows).
        """
        manifest = self.parts / MANIFEST
        discard = f"pass --restart to discard the parts in {str(self.parts)!r}"
        if not manifest.exists():
            if any(_SEGMENT.match(entry.name) for entry in self.parts.iterdir()):
                raise GeomprobeError(
                    f"an interrupted run for {self.path} left parts without {MANIFEST}, so its settings are unknown; {discard}"
                )
            atomic_write_text(manifest, json.dumps(self.settings, indent=1, sort_keys=True), retry=RESUME)
            return
        try:
            previous = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not valid JSON"
            raise GeomprobeError(
                f"the manifest of an interrupted run for {self.path} cannot be read ({reason}); {discard}"
            ) from None
        if not isinstance(previous, dict):
            raise GeomprobeError(f"the manifest of an interrupted run for {self.path} is not a JSON object; {discard}")
        if previous != self.settings:
            differing = sorted(k for k in set(previous) | set(self.settings) if previous.get(k) != self.settings.get(k))
            raise GeomprobeError(
                f"an interrupted run for {self.path} used different settings ({', '.join(differing)} differ); "
                "rerun it with the same settings to resume, or pass --restart to discard it"
            )

    def _complete_segments(self) -> list[tuple[int, int, Path]]:
        found = []
        for entry in self.parts.iterdir():
            match = _SEGMENT.match(entry.name)
            if match:
                found.append((int(match.group(1)), int(match.group(2)), entry))
            elif entry.name not in (MANIFEST, LOCK):
                remove_quietly(entry)  # a segment that was being written when the run died
        found.sort()
        contiguous, expected = [], 0
        for start, stop, entry in found:
            if start != expected or stop > self.n_rows:
                entry.unlink(missing_ok=True)
                continue
            contiguous.append((start, stop, entry))
            expected = stop
        return contiguous

    # -- writing ------------------------------------------------------------------------------
    def append(self, rows: range, **batch: Any) -> None:
        """Append the batch covering ``rows`` (which must follow the previous one)."""
        try:
            check_free_space(self.parts, _batch_bytes(batch) * 2 + SPACE_MARGIN, self.parts, RESUME)
            if self.current is None:
                self.current_start = rows.start
                name = f"seg-{rows.start:09d}-XXXXXXXXX.h5"
                self.current = CacheWriter(self.parts / name, overwrite=True, **self.writer_kwargs)
            self.current.append(**batch)
            stop = rows.stop
            if stop - self.current_start >= self.segment_rows or stop >= self.n_rows:
                self._publish(stop)
        except OSError as exc:
            self._drop_current()
            raise write_error(exc, self.parts, RESUME) from None
        except BaseException:
            self._drop_current()
            raise

    def _publish(self, stop: int) -> None:
        writer, self.current = self.current, None
        assert writer is not None
        writer.path = self.parts / f"seg-{self.current_start:09d}-{stop:09d}.h5"
        try:
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        self.segments.append((self.current_start, stop, writer.path))

    def _drop_current(self) -> None:
        if self.current is not None:
            self.current.abort()
            self.current = None

    def abort(self) -> None:
        """Stop after an error: keep the finished segments so a rerun resumes (none finished: no folder)."""
        try:
            self._drop_current()
            if not self.segments:
                shutil.rmtree(self.parts, ignore_errors=True)
        finally:
            self.lock.release()

    def finish(self, observe: Callable[[CacheFile], None] | None = None) -> Path:
        """Copy the segments into the final file, publish it atomically, then remove the parts.

        ``observe`` is called with each segment (open) as it is copied, e.g. to summarise rows.
        """
        if self.current is not None:
            with translate_write_errors(self.parts, RESUME):
                self._publish(self.current_start + self.current.n_prompts)
        covered = self.segments[-1][1] if self.segments else 0
        if covered != self.n_rows:
            raise GeomprobeError(f"only {covered} of {self.n_rows} rows were written; rerun the same command to resume")
        # The final file holds what the segments hold; check the room before HDF5 runs into a full disk.
        needed = sum(segment.stat().st_size for _, _, segment in self.segments)
        check_free_space(self.path.parent, needed + SPACE_MARGIN, self.path, RESUME)
        # The writer publishes the file when the block succeeds and deletes it when anything fails.
        with translate_write_errors(self.path, RESUME), CacheWriter(self.path, overwrite=True, **self.writer_kwargs) as final:
            for _, _, segment in self.segments:
                with CacheFile(segment) as part:
                    _copy_rows(part, final)
                    if observe is not None:
                        observe(part)
        shutil.rmtree(self.parts, ignore_errors=True)
        self.lock.release()
        return self.path


def _batch_bytes(batch: dict[str, Any]) -> int:
    """Bytes of a batch's activations as given (the stored dtype is at most as wide)."""
    total = 0
    for by_pooling in batch.get("activations", {}).values():
        for values in by_pooling.values():
            total += int(getattr(values, "nbytes", 0))
    return total


def _copy_rows(part: CacheFile, writer: CacheWriter) -> None:
    offsets = part.token_offsets
    ids = part.token_ids
    writer.append(
        activations={h: {p: part.read_stored(h, p) for p in part.poolings} for h in part.hooks},
        labels=part.labels,
        pair_ids=part.pair_ids,
        texts=part.texts,
        sources=[s.decode() if isinstance(s, bytes) else s for s in part.file["prompts/source"][:]],
        token_ids=[ids[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)],
        response_start=part.response_start,
        response_end=part.response_end,
        stored=True,
    )


def segment_rows_for(batch_size: int, bytes_per_row: float, target_bytes: int = 64 << 20, max_rows: int = 2048) -> int:
    """Rows per segment: whole batches, about ``target_bytes`` of activations, at most ``max_rows``."""
    rows = int(min(max_rows, max(1, target_bytes // max(1.0, bytes_per_row))))
    return max(batch_size, rows - rows % batch_size)
