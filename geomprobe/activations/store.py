"""Reading cache files: :class:`CacheFile` and the one-call readers.

The layout is described in :mod:`geomprobe.activations.format` (and activations/README.md);
files are written by :mod:`geomprobe.activations.writer`. This module also re-exports the
names most callers need, so ``geomprobe.activations.store`` stays the one import for a cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from geomprobe.activations.format import (  # noqa: F401  (re-exported)
    BFLOAT16_MAX,
    CHECKSUM_ATTR,
    FLOAT16_MAX,
    FORMAT,
    FORMAT_MINOR,
    FORMAT_VERSION,
    POOLINGS,
    STORE_DTYPES,
    checksum,
    from_stored,
    to_stored,
)
from geomprobe.activations.writer import CacheWriter, partial_path, write_cache  # noqa: F401  (re-exported)
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_layer
from geomprobe.core.io import PathLike, check_regular_file
from geomprobe.core.validate import Fields

_RECREATE = "re-create it with geomprobe cache"
_ROW_DATASETS = (
    "pair_ids",
    "prompts/text",
    "prompts/source",
    "prompts/n_tokens",
    "prompts/response_start",
    "prompts/response_end",
)
_FILE_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}


def check_virtual_sources(path: str | Path) -> list[str]:
    """Shard files a virtual merged cache needs that are missing (empty list: all present)."""
    path = Path(path)
    missing: set[str] = set()
    with h5py.File(path, "r") as f:
        if f.attrs.get("merge_mode") != "virtual":
            return []

        def visit(name: str, obj: object) -> None:
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

    def __init__(self, path: PathLike, *, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise GeomprobeError(f"{str(self.path)!r} is a directory; pass a cache .h5 file")
        if not self.path.exists():
            raise GeomprobeError(f"cache file {str(self.path)!r} does not exist; create it with geomprobe cache")
        check_regular_file(self.path, "cache file")  # HDF5 would block on a FIFO for ever
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
        self._texts_checked = False
        try:
            self._validate()
        except BaseException:
            self.file.close()
            raise

    # -- validation -------------------------------------------------------------------------
    def _damaged(self, problem: str) -> GeomprobeError:
        return GeomprobeError(f"cache {str(self.path)!r} is damaged: {problem}; {_RECREATE}")

    def _validate(self) -> None:
        """Check every attribute and the shape and range of every per-row dataset before any use.

        Costs one read of the small integer arrays (labels, pair ids, token offsets and spans);
        the texts' checksum is checked when the texts are first read, the activations never.
        """
        fields = Fields(self.attrs, f"cache {str(self.path)!r}", _RECREATE)
        version = fields.integer("format_version", minimum=0)
        if version > FORMAT_VERSION:
            raise GeomprobeError(
                f"cache {str(self.path)!r} has format version {version}, newer than this geomprobe reads "
                f"({FORMAT_VERSION}); upgrade geomprobe"
            )
        self.format_minor = fields.integer("format_minor", default=0, minimum=0)
        self.hooks: list[str] = fields.string_list("hooks", as_json=True, non_empty=True)
        self.poolings: list[str] = fields.string_list("poolings", as_json=True, non_empty=True)
        unknown = [p for p in self.poolings if p not in POOLINGS]
        if unknown:
            raise self._damaged(f"unknown pooling {unknown[0]!r} in 'poolings'")
        self.label_names: list[str] = fields.string_list("label_names", as_json=True, unique=True)
        self.d_model = fields.integer("d_model", minimum=1)
        if "n_layers" in self.attrs:
            fields.integer("n_layers", minimum=1)
        self.model_id = str(self.attrs.get("model_id", ""))
        self.n_prompts = n = self._shape("labels", 1)[0]
        for name in _ROW_DATASETS:
            if self._shape(name, 1)[0] != n:
                raise self._damaged(f"{name} has {self.file[name].shape[0]} rows but labels has {n}")
        offsets_shape = self._shape("prompts/token_offsets", 1)
        n_token_ids = self._shape("prompts/token_ids", 1)[0]
        if offsets_shape[0] != n + 1:
            raise self._damaged(f"prompts/token_offsets has {offsets_shape[0]} entries, expected {n + 1}")
        labels = self._integers("labels")
        if n and (labels.min() < -1 or labels.max() >= len(self.label_names)):
            bad = int(labels[(labels < -1) | (labels >= len(self.label_names))][0])
            raise self._damaged(
                f"label code {bad} is outside -1..{len(self.label_names) - 1} ({len(self.label_names)} label names)"
            )
        pairs = self._integers("pair_ids")
        if n and pairs.min() < -1:
            raise self._damaged(f"pair id {int(pairs.min())} is below -1")
        offsets = self._integers("prompts/token_offsets")
        lengths = np.diff(offsets)
        if offsets[0] != 0 or (lengths < 0).any() or offsets[-1] != n_token_ids:
            raise self._damaged("prompts/token_offsets does not run from 0 up to the number of token ids")
        if not np.array_equal(self._integers("prompts/n_tokens"), lengths):
            raise self._damaged("prompts/n_tokens disagrees with prompts/token_offsets")
        start, end = self._integers("prompts/response_start"), self._integers("prompts/response_end")
        if ((start < 0) | (start > end) | (end > lengths)).any():
            raise self._damaged("a response span lies outside its prompt's tokens")
        self._check_digest("labels", labels)
        self._check_digest("pair_ids", pairs)
        for hook in self.hooks:
            for pooling in self.poolings:
                self._check_activations(hook, pooling, n_token_ids if pooling == "all" else n)

    def _shape(self, name: str, ndim: int) -> tuple[int, ...]:
        ds = self.file.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise self._damaged(f"dataset {name!r} is missing")
        if len(ds.shape) != ndim:
            raise self._damaged(f"{name} has shape {ds.shape}, expected {ndim} dimension(s)")
        return ds.shape

    def _integers(self, name: str) -> np.ndarray:
        ds = self.file[name]
        if ds.dtype.kind not in "iu":
            raise self._damaged(f"{name} holds {ds.dtype}, not integers")
        return ds[()].astype(np.int64)

    def _check_digest(self, name: str, values: Any) -> None:
        raw = self.attrs.get(CHECKSUM_ATTR)
        if raw is None:
            # Minor 1 writes the digests with every file, so a 1.1 file without them was edited:
            # deleting the attribute must not switch the check off. Only 1.0 files are read unchecked.
            if self.format_minor >= 1:
                raise self._damaged(f"format 1.{self.format_minor} requires the {CHECKSUM_ATTR!r} attribute, which is missing")
            return
        digests = Fields({CHECKSUM_ATTR: raw}, f"cache {str(self.path)!r}", _RECREATE).text(CHECKSUM_ATTR)
        try:
            expected = json.loads(digests)[name]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise self._damaged(f"the {CHECKSUM_ATTR!r} attribute is not a JSON object with a digest of {name}") from None
        if checksum(name, values) != expected:
            raise self._damaged(f"{name} does not match its SHA-256 checksum (changed after it was written)")

    def _check_activations(self, hook: str, pooling: str, rows: int) -> None:
        name = f"activations/{hook}/{pooling}"
        shape = self._shape(name, 2)
        if shape != (rows, self.d_model):
            raise self._damaged(f"{name} has shape {shape}, expected {(rows, self.d_model)}")
        ds = self.file[name]
        stored_as = ds.attrs.get("stored_as", "float32")
        stored_as = stored_as.decode() if isinstance(stored_as, bytes) else stored_as
        if stored_as not in _FILE_DTYPES or ds.dtype != _FILE_DTYPES[stored_as]:
            raise self._damaged(f"{name} is stored as {stored_as!r} with dtype {ds.dtype}")

    def verify(self) -> None:
        """Check everything :meth:`__init__` does plus the texts' checksum (reads every text)."""
        self._validate()
        _ = self.texts

    # -- metadata ---------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        return self.file["labels"][:]

    @property
    def pair_ids(self) -> np.ndarray:
        return self.file["pair_ids"][:]

    @property
    def texts(self) -> list[str]:
        raw = self.file["prompts/text"][()]
        if not self._texts_checked:  # texts can be large, so their digest is checked on first read
            self._check_digest("prompts/text", raw)
            self._texts_checked = True
        return [t.decode() if isinstance(t, bytes) else t for t in raw]

    @property
    def sources(self) -> list[dict]:
        raw = self.file["prompts/source"][:]
        out = []
        for i, s in enumerate(raw):
            try:
                value = json.loads(s.decode() if isinstance(s, bytes) else s) if len(s) else {}
            except (ValueError, RecursionError):
                raise self._damaged(f"prompts/source row {i} is not valid JSON") from None
            out.append(value if isinstance(value, dict) else {"value": value})
        return out

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

        n_layers = self.attrs.get("n_layers")
        if n_layers is None:
            n_layers = max(hook_layer(h) for h in self.hooks) + 1
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
                f"cache {self.path.name} has no {pooling!r} pooling; "
                f"it has {', '.join(self.poolings)} (re-cache with --pooling {pooling})"
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
                    f"cache {str(self.path)!r} is corrupted at {hook}/{pooling} (checksum mismatch); "
                    "recreate it with geomprobe cache"
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

    def __enter__(self) -> CacheFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short_list(items: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def open_cache(path: PathLike) -> CacheFile:
    return CacheFile(path)


def read_activations(path: PathLike, hook: str, pooling: str = "last") -> np.ndarray:
    """``(N, d)`` float32 activations of ``hook`` pooled by ``pooling`` (``all``: ``(T, d)``)."""
    with CacheFile(path) as cache:
        return cache.read(hook, pooling)


def read_labels(path: PathLike) -> np.ndarray:
    """``(N,)`` int64 labels; names are in ``open_cache(path).label_names``."""
    with CacheFile(path) as cache:
        return cache.labels
