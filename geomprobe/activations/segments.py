"""Crash-safe, resumable cache writing.

A run writes its output ``OUT`` as numbered segment files in ``.OUT.parts/`` beside it, each a
complete small cache file published by an atomic rename, plus a ``manifest.json`` with the
settings that produced them. When every row is written the segments are copied, in order, into
``.OUT.partial``, which is renamed to ``OUT``; only then is the parts folder removed.

So a crash (``kill -9`` included) at any moment loses at most the segment being written: the
same command run again checks that its settings match the manifest, skips the rows already in
complete segments and carries on. Segments hold whole batches, so a resumed run feeds the model
exactly the batches an uninterrupted run would and its arrays are bit-for-bit the same.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from geomprobe.activations.store import CacheFile
from geomprobe.activations.writer import CACHE_EXAMPLE_NAME, CacheWriter
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import atomic_write_text, check_output_file, translate_write_errors, write_error

MANIFEST = "manifest.json"
_SEGMENT = re.compile(r"^seg-(\d{9})-(\d{9})\.h5$")


def parts_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.parts")


# How to carry on after a write error: the finished segments are kept, so a rerun resumes.
RESUME = "rerun the same command to resume (finished parts are kept)"


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
        try:
            if restart:
                shutil.rmtree(self.parts, ignore_errors=True)
            self.parts.mkdir(exist_ok=True)
            self._check_manifest()
            self.segments = self._complete_segments()
        except OSError as exc:
            raise write_error(exc, self.parts, RESUME) from None
        self.start_row = self.segments[-1][1] if self.segments else 0

    # -- state on disk ----------------------------------------------------------------------
    def _check_manifest(self) -> None:
        manifest = self.parts / MANIFEST
        if manifest.exists():
            try:
                previous = json.loads(manifest.read_text())
            except (OSError, ValueError):
                previous = None
            if previous is not None and previous != self.settings:
                differing = sorted(
                    k for k in set(previous) | set(self.settings) if previous.get(k) != self.settings.get(k)
                )
                raise GeomprobeError(
                    f"an interrupted run for {self.path} used different settings ({', '.join(differing)} differ); "
                    "rerun it with the same settings to resume, or pass --restart to discard it"
                )
            if previous is not None:
                return
        atomic_write_text(manifest, json.dumps(self.settings, indent=1, sort_keys=True), retry=RESUME)

    def _complete_segments(self) -> list[tuple[int, int, Path]]:
        found = []
        for entry in self.parts.iterdir():
            match = _SEGMENT.match(entry.name)
            if match:
                found.append((int(match.group(1)), int(match.group(2)), entry))
            elif entry.name != MANIFEST:
                entry.unlink(missing_ok=True)  # a segment that was being written when the run died
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
        """Stop after an error: keep the finished segments so a rerun resumes."""
        self._drop_current()

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
        # The writer publishes the file when the block succeeds and deletes it when anything fails.
        with translate_write_errors(self.path, RESUME), CacheWriter(self.path, overwrite=True, **self.writer_kwargs) as final:
            for _, _, segment in self.segments:
                with CacheFile(segment) as part:
                    _copy_rows(part, final)
                    if observe is not None:
                        observe(part)
        shutil.rmtree(self.parts, ignore_errors=True)
        return self.path


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

