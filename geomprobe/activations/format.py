"""The HDF5 activation-cache format: names, storage dtypes and the conversions to and from them.

Layout (``format = "geomprobe-activations"``, ``format_version = 1``, ``format_minor = 1``; see
activations/README.md)::

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

Versions: ``format_version`` is the major version (a reader refuses a newer one); ``format_minor``
grows with additions old readers may ignore. Minor 1 added the ``checksums`` attribute: a JSON
object of SHA-256 digests of ``labels`` and ``pair_ids`` (as little-endian int64) and of
``prompts/text`` (each text as UTF-8 after its 8-byte little-endian length), written when the
file is completed and checked when it is read (files without it, minor 0, are read unchecked).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.validate import sha256_of_array, sha256_of_texts

FORMAT = "geomprobe-activations"
FORMAT_VERSION = 1
FORMAT_MINOR = 1
CHECKSUM_ATTR = "checksums"
CHECKSUMMED = ("labels", "pair_ids", "prompts/text")
POOLINGS = ("last", "mean", "all")
STORE_DTYPES = ("float32", "float16", "bfloat16")
FLOAT16_MAX = float(np.finfo(np.float16).max)
BFLOAT16_MAX = float(np.uint32(0x7F7F0000).view(np.float32))


def checksum(name: str, values: Any) -> str:
    """The digest of one checksummed dataset's values (see the module docs)."""
    if name == "prompts/text":
        return sha256_of_texts(values)
    return sha256_of_array(np.asarray(values))


def compute_checksums(*files: Any) -> str:
    """The ``checksums`` attribute for the rows of open cache files (h5py), joined in the order given."""
    digests = {name: checksum(name, np.concatenate([f[name][()] for f in files])) for name in CHECKSUMMED}
    return json.dumps(digests, sort_keys=True)


def chunk_rows(d: int, target_bytes: int = 1 << 20, itemsize: int = 4) -> int:
    """Rows per HDF5 chunk so one chunk of a (rows, d) dataset holds about ``target_bytes``."""
    return max(1, target_bytes // max(1, d * itemsize))


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
