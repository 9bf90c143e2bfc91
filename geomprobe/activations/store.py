"""The HDF5 activation-cache format: one writer and one reader used by every stage.

Layout (``format = "geomprobe-activations"``, ``format_version = 1``; see activations/README.md)::

    /                          attrs: provenance (model id, revision, dtypes, chat template, ...),
                                      hooks, poolings, label_names (JSON lists), complete
    /labels                    (N,)   int64   index into label_names, -1 = unlabelled
    /pair_ids                  (N,)   int64   pair/group id, -1 = none
    /prompts/text              (N,)   str     the exact text fed to the model (chat template applied)
    /prompts/source            (N,)   str     the dataset row as JSON
    /prompts/n_tokens          (N,)   int64
    /prompts/response_start    (N,)   int64   first token of the final message's content
    /prompts/response_end      (N,)   int64   one past its last token (mean pooling is over [start, end))
    /prompts/token_offsets     (N+1,) int64   prompt i owns token_ids[offsets[i]:offsets[i+1]]
    /prompts/token_ids         (T,)   int32
    /activations/<hook>/last   (N, d)         hidden state at the last token
    /activations/<hook>/mean   (N, d)         mean over the final message's tokens, padding excluded
    /activations/<hook>/all    (T, d)         every token, rows follow /prompts/token_offsets

Activations are float32 unless the file says otherwise (``stored_as`` attribute on each dataset:
``float32``, ``float16`` or ``bfloat16``; bfloat16 is kept as its uint16 bit pattern because HDF5
has no bfloat16 type). The reader always returns float32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_layer

FORMAT = "geomprobe-activations"
FORMAT_VERSION = 1
POOLINGS = ("last", "mean", "all")
STORE_DTYPES = ("float32", "float16", "bfloat16")
FLOAT16_MAX = float(np.finfo(np.float16).max)
BFLOAT16_MAX = float(np.uint32(0x7F7F0000).view(np.float32))
_STR = h5py.string_dtype("utf-8")


def _package_version() -> str:
    from geomprobe.core import __version__

    return __version__


def _chunk_rows(d: int, target_bytes: int = 1 << 20, itemsize: int = 4) -> int:
    return max(1, target_bytes // max(1, d * itemsize))


def partial_path(path: str | Path) -> Path:
    """Where a cache is written until it is complete (then renamed to ``path``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def to_stored(array: np.ndarray, store_dtype: str, where: str) -> np.ndarray:
    """Convert float32 activations to the storage dtype, refusing to clip float16 overflow."""
    if store_dtype == "float32":
        return np.ascontiguousarray(array, dtype=np.float32)
    if store_dtype == "float16":
        peak = float(np.max(np.abs(array))) if array.size else 0.0
        if not np.isfinite(peak) or peak > FLOAT16_MAX:
            raise GeomprobeError(
                f"activation magnitude {peak:.4g} at {where} overflows float16 (max {FLOAT16_MAX:.0f}); "
                "use --store-dtype bfloat16 or float32"
            )
        return array.astype(np.float16)
    if store_dtype == "bfloat16":
        # Round to nearest even on the upper 16 bits of the float32 pattern.
        bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
        rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
        stored = ((bits + rounding) >> 16).astype(np.uint16)
        # Finite float32 values above bfloat16's max (~3.39e38) would round to inf: refuse, as for float16.
        if ((stored & np.uint16(0x7FFF)) == np.uint16(0x7F80)).any() and np.isfinite(array).all():
            raise GeomprobeError(
                f"activation magnitude above {BFLOAT16_MAX:.4g} at {where} overflows bfloat16; use --store-dtype float32"
            )
        return stored
    raise GeomprobeError(f"unknown store dtype {store_dtype!r}; use one of {', '.join(STORE_DTYPES)}")


def from_stored(array: np.ndarray, stored_as: str) -> np.ndarray:
    if stored_as == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(array, dtype=np.float32)


class CacheWriter:
    """Append batches of pooled activations to a new cache file, then publish it atomically.

    The file is written at ``partial_path(path)`` and renamed to ``path`` by :meth:`finish`,
    so an interrupted run never leaves a file under the final name.
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
        self.path = Path(path)
        check_output_path(self.path, overwrite)
        for pooling in poolings:
            if pooling not in POOLINGS:
                raise GeomprobeError(f"unknown pooling {pooling!r}; use any of {', '.join(POOLINGS)}")
        if store_dtype not in STORE_DTYPES:
            raise GeomprobeError(f"unknown store dtype {store_dtype!r}; use one of {', '.join(STORE_DTYPES)}")
        self.hooks = list(hooks)
        self.poolings = list(poolings)
        self.d_model = int(d_model)
        self.store_dtype = store_dtype
        self.n_prompts = 0
        self.n_tokens = 0
        self.tmp = partial_path(self.path)
        self.tmp.unlink(missing_ok=True)
        self.file = h5py.File(self.tmp, "w")
        root = self.file
        root.attrs.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "complete": False,
                "geomprobe_version": _package_version(),
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
                rows = _chunk_rows(self.d_model, itemsize=itemsize)
                # ~1 MiB chunks, but no bigger than the whole dataset will be (small caches stay small).
                expected = expected_tokens if pooling == "all" else expected_rows
                if expected:
                    rows = max(1, min(rows, int(expected)))
                # fletcher32: every chunk carries a checksum, so corruption after the fact is
                # detected on read instead of returning garbage.
                ds = group.create_dataset(
                    pooling, shape=(0, self.d_model), maxshape=(None, self.d_model),
                    chunks=(rows, self.d_model), dtype=file_dtype, fletcher32=True,
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
        labels: Sequence[int],
        pair_ids: Sequence[int] | None = None,
        texts: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        token_ids: Sequence[Sequence[int]] | None = None,
        response_start: Sequence[int] | None = None,
        response_end: Sequence[int] | None = None,
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
                    raise GeomprobeError(
                        f"{hook}/{pooling}: got shape {values.shape}, expected {(expected, self.d_model)}"
                    )
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
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def check_output_path(path: str | Path, overwrite: bool) -> None:
    path = Path(path)
    if path.is_dir():
        raise GeomprobeError(f"output {str(path)!r} is a directory; give a file name such as {path / 'cache.h5'}")
    if path.exists() and not overwrite:
        raise GeomprobeError(f"output {str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it")
    if not path.parent.exists():
        raise GeomprobeError(f"output folder {str(path.parent)!r} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise GeomprobeError(f"output folder {str(path.parent)!r} is not writable; choose another --out")


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
    nested = {
        hook: (dict(value) if isinstance(value, Mapping) else {pooling: value}) for hook, value in activations.items()
    }
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
    writer = CacheWriter(
        path, hooks=list(nested), poolings=poolings, d_model=first.shape[1], label_names=label_names,
        store_dtype=store_dtype, attrs=dict({"model_id": "arrays"}, **(attrs or {})), overwrite=overwrite,
        expected_rows=first.shape[0],
    )
    with writer:
        writer.append(activations=nested, labels=labels, pair_ids=pair_ids, texts=texts)
    return writer.path


def check_virtual_sources(path: str | Path) -> list[str]:
    """Shard files a virtual merged cache needs that are missing (empty list: all present)."""
    path = Path(path)
    missing: set[str] = set()
    with h5py.File(path, "r") as f:
        if f.attrs.get("merge_mode") != "virtual":
            return []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.is_virtual:
                for vds in obj.virtual_sources():
                    source = Path(vds.file_name)
                    if not (source if source.is_absolute() else path.parent / source).exists():
                        missing.add(vds.file_name)

        f.visititems(visit)
    return sorted(missing)


@dataclass(frozen=True)
class CacheInfo:
    path: Path
    hooks: list[str]
    poolings: list[str]
    n_prompts: int
    d_model: int
    label_names: list[str]
    attrs: dict[str, Any]


class CacheFile:
    """Read a cache file. Use as a context manager or call :meth:`close`.

    >>> with open_cache("activations/harmful-harmless.h5") as cache:
    ...     X = cache.read("blocks.12.hook_resid_post", "last")
    """

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise GeomprobeError(f"{str(self.path)!r} is a directory; pass a cache .h5 file")
        if not self.path.exists():
            raise GeomprobeError(f"cache file {str(self.path)!r} does not exist; create it with geomprobe cache")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError:
            raise GeomprobeError(
                f"{str(self.path)!r} is not a readable HDF5 file (truncated or not a cache); recreate it with geomprobe cache"
            ) from None
        attrs = self.file.attrs
        if attrs.get("format") != FORMAT:
            self.file.close()
            raise GeomprobeError(f"{str(self.path)!r} is not a geomprobe activation cache; create one with geomprobe cache")
        if not bool(attrs.get("complete", False)) and not allow_incomplete:
            self.file.close()
            raise GeomprobeError(
                f"cache {str(self.path)!r} is incomplete (the run writing it did not finish); rerun geomprobe cache"
            )
        if attrs.get("merge_mode") == "virtual":
            missing = check_virtual_sources(self.path)
            if missing:
                self.file.close()
                raise GeomprobeError(
                    f"merged cache {str(self.path)!r} reads shard {missing[0]} which is missing; "
                    "put the shards back beside it or rerun geomprobe merge --copy"
                )
        self.attrs: dict[str, Any] = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
        self.hooks: list[str] = json.loads(attrs["hooks"])
        self.poolings: list[str] = json.loads(attrs["poolings"])
        self.label_names: list[str] = json.loads(attrs["label_names"])
        self.d_model = int(attrs["d_model"])
        self.n_prompts = int(self.file["labels"].shape[0])
        self.model_id = str(attrs.get("model_id", ""))

    # -- metadata ---------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        return self.file["labels"][:]

    @property
    def pair_ids(self) -> np.ndarray:
        return self.file["pair_ids"][:]

    @property
    def texts(self) -> list[str]:
        return [t.decode() if isinstance(t, bytes) else t for t in self.file["prompts/text"][:]]

    @property
    def sources(self) -> list[dict]:
        raw = self.file["prompts/source"][:]
        return [json.loads(s.decode() if isinstance(s, bytes) else s) if len(s) else {} for s in raw]

    @property
    def token_offsets(self) -> np.ndarray:
        return self.file["prompts/token_offsets"][:]

    @property
    def token_ids(self) -> np.ndarray:
        return self.file["prompts/token_ids"][:]

    @property
    def response_start(self) -> np.ndarray:
        """Per prompt, the index (within its own tokens) where the final message's content starts."""
        return self.file["prompts/response_start"][:]

    @property
    def response_end(self) -> np.ndarray:
        """Per prompt, one past the final message's last content token."""
        return self.file["prompts/response_end"][:]

    def info(self) -> CacheInfo:
        return CacheInfo(self.path, self.hooks, self.poolings, self.n_prompts, self.d_model, self.label_names, self.attrs)

    def layer(self, hook: str) -> int:
        return hook_layer(hook)

    def hooks_for(self, specs: str | Sequence[str] | None) -> list[str]:
        """Select hooks stored in this file with the same specs the CLI takes (None: all)."""
        if specs is None or (not isinstance(specs, str) and len(specs) == 0):
            return list(self.hooks)
        from geomprobe.core.hooks import resolve_hooks

        n_layers = int(self.attrs.get("n_layers", max(hook_layer(h) for h in self.hooks) + 1))
        wanted = resolve_hooks(specs, n_layers)
        missing = [h for h in wanted if h not in self.hooks]
        if missing:
            raise GeomprobeError(f"cache {self.path.name} has no hook {missing[0]!r}; it has {_short_list(self.hooks)}")
        return wanted

    # -- activations ------------------------------------------------------------------------
    def _dataset(self, hook: str, pooling: str) -> h5py.Dataset:
        if hook not in self.hooks:
            raise GeomprobeError(f"cache {self.path.name} has no hook {hook!r}; it has {_short_list(self.hooks)}")
        if pooling not in self.poolings:
            raise GeomprobeError(
                f"cache {self.path.name} has no {pooling!r} pooling; it has {', '.join(self.poolings)} (re-cache with --pooling {pooling})"
            )
        return self.file[f"activations/{hook}/{pooling}"]

    def read(self, hook: str, pooling: str = "last", rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Activations as float32: (N, d) for last/mean, (T, d) for all (see token_offsets)."""
        ds = self._dataset(hook, pooling)
        stored_as = ds.attrs.get("stored_as", "float32")
        try:
            values = self._read_rows(ds, rows)
        except OSError as exc:
            text = str(exc).lower()
            if "fletcher32" in text or "checksum" in text or "data error" in text or "filter returned failure" in text:
                raise GeomprobeError(
                    f"cache {str(self.path)!r} is corrupted at {hook}/{pooling} (checksum mismatch); recreate it with geomprobe cache"
                ) from None
            if "memory" in text or "alloc" in text:
                raise MemoryError(f"out of memory reading {hook}/{pooling} from {self.path}") from None
            raise GeomprobeError(f"cannot read {hook}/{pooling} from {str(self.path)!r} ({exc}); check the file") from None
        return from_stored(values, stored_as)

    @staticmethod
    def _read_rows(ds: h5py.Dataset, rows: slice | np.ndarray | None) -> np.ndarray:
        if rows is None:
            values = ds[()]
        elif isinstance(rows, slice):
            values = ds[rows]
        else:
            rows = np.asarray(rows)
            order = np.argsort(rows, kind="stable")
            sorted_rows = rows[order]
            unique, inverse = np.unique(sorted_rows, return_inverse=True)
            picked = ds[unique.tolist()] if len(unique) else ds[0:0]
            values = np.empty((len(rows), ds.shape[1]), dtype=picked.dtype)
            values[order] = picked[inverse]
        return values

    def read_stored(self, hook: str, pooling: str, rows: slice | None = None) -> np.ndarray:
        """Raw values in the storage dtype (for copying between cache files)."""
        return self._read_rows(self._dataset(hook, pooling), rows)

    def iter_chunks(self, hook: str, pooling: str = "last", chunk_rows: int = 8192) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, float32 block)`` so large caches never load whole."""
        ds = self._dataset(hook, pooling)
        for start in range(0, ds.shape[0], chunk_rows):
            yield start, self.read(hook, pooling, slice(start, start + chunk_rows))

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "CacheFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short_list(items: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def open_cache(path: str | Path) -> CacheFile:
    return CacheFile(path)


def read_activations(path: str | Path, hook: str, pooling: str = "last") -> np.ndarray:
    """``(N, d)`` float32 activations of ``hook`` pooled by ``pooling`` (``all``: ``(T, d)``)."""
    with CacheFile(path) as cache:
        return cache.read(hook, pooling)


def read_labels(path: str | Path) -> np.ndarray:
    """``(N,)`` int64 labels; names are in ``open_cache(path).label_names``."""
    with CacheFile(path) as cache:
        return cache.labels
