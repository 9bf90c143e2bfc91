"""Writing cache files: :class:`CacheWriter` streams batches into a new file, :func:`write_cache` stores arrays.

A file is written under :func:`partial_path` and renamed to its final name only when complete, so
an interrupted run never leaves a file under the final name. The layout is described in
:mod:`geomprobe.activations.format`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from geomprobe.activations.format import (
    CHECKSUM_ATTR,
    FORMAT,
    FORMAT_MINOR,
    FORMAT_VERSION,
    POOLINGS,
    STORE_DTYPES,
    chunk_rows,
    compute_checksums,
    to_stored,
)
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_layer
from geomprobe.core.io import check_output_file, remove_quietly, translate_write_errors
from geomprobe.core.validate import check_text, check_unique_names

_STR = h5py.string_dtype("utf-8")
CACHE_EXAMPLE_NAME = "cache.h5"


def _package_version() -> str:
    from geomprobe.core import __version__

    return __version__


def partial_path(path: str | Path) -> Path:
    """Where a cache is written until it is complete (then renamed to ``path``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


class CacheWriter:
    """Append batches of pooled activations to a new cache file, then publish it atomically.

    The file is written at ``partial_path(path)`` and renamed to ``path`` by :meth:`finish`,
    so an interrupted run never leaves a file under the final name. Failures to write raise
    ``OSError``: the caller reports them (``geomprobe.core.io.write_error``) with the right way
    to carry on (:func:`write_cache` says run again, a resumable run says rerun to resume).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        hooks: Sequence[str],
        poolings: Sequence[str],
        d_model: int,
        label_names: Sequence[str],
        store_dtype: str = "float32",
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        expected_rows: int | None = None,
        expected_tokens: int | None = None,
    ) -> None:
        self.path = check_output_file(path, overwrite=overwrite, example_name=CACHE_EXAMPLE_NAME)
        for pooling in poolings:
            if pooling not in POOLINGS:
                raise GeomprobeError(f"unknown pooling {pooling!r}; use any of {', '.join(POOLINGS)}")
        if store_dtype not in STORE_DTYPES:
            raise GeomprobeError(f"unknown store dtype {store_dtype!r}; use one of {', '.join(STORE_DTYPES)}")
        check_unique_names([str(n) for n in label_names])
        self.hooks = list(hooks)
        self.poolings = list(poolings)
        self.d_model = int(d_model)
        self.store_dtype = store_dtype
        self.n_prompts = 0
        self.n_tokens = 0
        self.tmp = partial_path(self.path)
        remove_quietly(self.tmp)  # left by a run that was killed
        self.file = h5py.File(self.tmp, "w")
        try:
            self._create_layout(label_names, attrs, expected_rows, expected_tokens)
        except BaseException:
            self.abort()
            raise

    def _create_layout(
        self,
        label_names: Sequence[str],
        attrs: Mapping[str, Any] | None,
        expected_rows: int | None,
        expected_tokens: int | None,
    ) -> None:
        store_dtype = self.store_dtype
        root = self.file
        root.attrs.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "format_minor": FORMAT_MINOR,
                "complete": False,
                "geomprobe_version": _package_version(),
                "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                "hooks": json.dumps(self.hooks),
                "poolings": json.dumps(self.poolings),
                "label_names": json.dumps(list(label_names)),
                "d_model": self.d_model,
                "store_dtype": store_dtype,
            }
        )
        for key, value in (attrs or {}).items():
            root.attrs[key] = value if isinstance(value, (int, float, bool, np.integer, np.floating)) else str(value)
        root.create_dataset("label_names", data=np.array(list(label_names), dtype=object), dtype=_STR)
        grow = {"maxshape": (None,), "chunks": (4096,)}
        root.create_dataset("labels", shape=(0,), dtype=np.int64, **grow)
        root.create_dataset("pair_ids", shape=(0,), dtype=np.int64, **grow)
        prompts = root.create_group("prompts")
        prompts.create_dataset("text", shape=(0,), dtype=_STR, maxshape=(None,), chunks=(256,))
        prompts.create_dataset("source", shape=(0,), dtype=_STR, maxshape=(None,), chunks=(256,))
        prompts.create_dataset("n_tokens", shape=(0,), dtype=np.int64, **grow)
        prompts.create_dataset("response_start", shape=(0,), dtype=np.int64, **grow)
        prompts.create_dataset("response_end", shape=(0,), dtype=np.int64, **grow)
        prompts.create_dataset("token_offsets", data=np.zeros(1, dtype=np.int64), maxshape=(None,), chunks=(4096,))
        prompts.create_dataset("token_ids", shape=(0,), dtype=np.int32, maxshape=(None,), chunks=(65536,))
        acts = root.create_group("activations")
        file_dtype = np.uint16 if store_dtype == "bfloat16" else np.dtype(store_dtype)
        itemsize = np.dtype(file_dtype).itemsize
        for hook in self.hooks:
            group = acts.create_group(hook)
            for pooling in self.poolings:
                rows = chunk_rows(self.d_model, itemsize=itemsize)
                # ~1 MiB chunks, but no bigger than the whole dataset will be (small caches stay small).
                expected = expected_tokens if pooling == "all" else expected_rows
                if expected:
                    rows = max(1, min(rows, int(expected)))
                # fletcher32: every chunk carries a checksum, so corruption after the fact is
                # detected on read instead of returning garbage.
                ds = group.create_dataset(
                    pooling,
                    shape=(0, self.d_model),
                    maxshape=(None, self.d_model),
                    chunks=(rows, self.d_model),
                    dtype=file_dtype,
                    fletcher32=True,
                )
                ds.attrs.update({"hook": hook, "pooling": pooling, "stored_as": store_dtype})
                try:
                    ds.attrs["layer"] = hook_layer(hook)
                except GeomprobeError:
                    ds.attrs["layer"] = -1

    @staticmethod
    def _append(ds: h5py.Dataset, values: np.ndarray) -> None:
        start = ds.shape[0]
        ds.resize(start + len(values), axis=0)
        ds[start:] = values

    def append(
        self,
        *,
        activations: Mapping[str, Mapping[str, np.ndarray]],
        labels: Sequence[int] | np.ndarray,
        pair_ids: Sequence[int] | np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        token_ids: Sequence[Sequence[int] | np.ndarray] | None = None,
        response_start: Sequence[int] | np.ndarray | None = None,
        response_end: Sequence[int] | np.ndarray | None = None,
        stored: bool = False,
    ) -> None:
        """Append one batch. ``activations[hook][pooling]`` is (b, d), or (tokens, d) for ``all``.

        ``stored=True`` takes arrays already in the storage dtype (copying between cache files).
        """
        b = len(labels)
        if token_ids is None:
            token_ids = [[] for _ in range(b)]
        lengths = np.array([len(t) for t in token_ids], dtype=np.int64)
        converted: dict[tuple[str, str], np.ndarray] = {}
        for hook in self.hooks:
            for pooling in self.poolings:
                values = np.asarray(activations[hook][pooling])
                expected = int(lengths.sum()) if pooling == "all" else b
                if values.shape != (expected, self.d_model):
                    raise GeomprobeError(f"{hook}/{pooling}: got shape {values.shape}, expected {(expected, self.d_model)}")
                if stored:
                    converted[hook, pooling] = values
                    continue
                if not np.all(np.isfinite(values)):
                    raise GeomprobeError(f"non-finite activations at {hook}/{pooling}; check the model and dtype")
                converted[hook, pooling] = to_stored(values, self.store_dtype, f"{hook}/{pooling}")
        f = self.file
        self._append(f["labels"], np.asarray(labels, dtype=np.int64))
        self._append(f["pair_ids"], np.asarray(pair_ids if pair_ids is not None else [-1] * b, dtype=np.int64))
        self._append(f["prompts/text"], np.array(list(texts) if texts is not None else [""] * b, dtype=object))
        self._append(f["prompts/source"], np.array(list(sources) if sources is not None else [""] * b, dtype=object))
        self._append(f["prompts/n_tokens"], lengths)
        self._append(
            f["prompts/response_start"],
            np.asarray(response_start if response_start is not None else [0] * b, dtype=np.int64),
        )
        self._append(
            f["prompts/response_end"],
            np.asarray(response_end if response_end is not None else lengths, dtype=np.int64),
        )
        self._append(f["prompts/token_offsets"], self.n_tokens + np.cumsum(lengths))
        if lengths.sum():
            self._append(f["prompts/token_ids"], np.concatenate([np.asarray(t, dtype=np.int32) for t in token_ids]))
        for (hook, pooling), values in converted.items():
            self._append(f[f"activations/{hook}/{pooling}"], values)
        self.n_prompts += b
        self.n_tokens += int(lengths.sum())

    def finish(self) -> Path:
        """Mark the file complete and move it to its final name."""
        self.file.attrs["complete"] = True
        self.file.attrs["n_prompts"] = self.n_prompts
        self.file.attrs["n_tokens"] = self.n_tokens
        self.file.attrs[CHECKSUM_ATTR] = compute_checksums(self.file)
        self.file.close()
        os.replace(self.tmp, self.path)  # an OSError is left to the caller, who knows how to carry on
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        try:
            self.file.close()
        finally:
            remove_quietly(self.tmp)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.finish()
        except BaseException:
            self.abort()
            raise


def write_cache(
    path: str | Path,
    activations: Mapping[str, np.ndarray] | Mapping[str, Mapping[str, np.ndarray]],
    labels: Sequence[int] | np.ndarray,
    label_names: Sequence[str] | None = None,
    *,
    pooling: str = "last",
    pair_ids: Sequence[int] | None = None,
    texts: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    store_dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write in-memory arrays as a cache file (``activations[hook]`` is (N, d), or a pooling dict).

    Useful for activations computed elsewhere and for tests. ``all`` pooling is not supported here.
    """
    nested = {hook: (dict(value) if isinstance(value, Mapping) else {pooling: value}) for hook, value in activations.items()}
    if not nested:
        raise GeomprobeError("no activations given; pass {hook: array}")
    poolings = list(next(iter(nested.values())).keys())
    if "all" in poolings:
        raise GeomprobeError("write_cache stores pooled (N, d) arrays only; use cache_activations for 'all'")
    first = np.asarray(next(iter(nested[next(iter(nested))].values())))
    if first.ndim != 2:
        raise GeomprobeError(f"activations must be 2-D (N, d); got shape {first.shape}")
    labels = np.asarray(labels)
    if label_names is None:
        label_names = [str(v) for v in sorted(set(labels.tolist()))]
        index = {name: i for i, name in enumerate(label_names)}
        labels = np.array([index[str(v)] for v in labels.tolist()], dtype=np.int64)
    if len(labels) != first.shape[0]:
        raise GeomprobeError(f"{len(labels)} labels for {first.shape[0]} activation rows; give one label per row")
    for i, text in enumerate(texts or []):
        check_text(text, f"text {i + 1}")
    with translate_write_errors(path):
        writer = CacheWriter(
            path,
            hooks=list(nested),
            poolings=poolings,
            d_model=first.shape[1],
            label_names=label_names,
            store_dtype=store_dtype,
            attrs=dict({"model_id": "arrays"}, **(attrs or {})),
            overwrite=overwrite,
            expected_rows=first.shape[0],
        )
    with translate_write_errors(writer.path), writer:
        writer.append(activations=nested, labels=labels, pair_ids=pair_ids, texts=texts)
    return writer.path
