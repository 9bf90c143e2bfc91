"""Steering directions: build them from contrast data, keep them with their provenance, save/load.

A :class:`SteeringVector` holds one ``(d_model,)`` float32 vector per hook. The key is the hook
the activations were *read* at (``blocks.{l}.hook_resid_post`` = output of block ``l``), and by
default the vector is *applied* at the same hook. Methods:

``mean-diff``   contrastive activation addition: mean(positive) - mean(negative); with pair ids,
                the mean over pairs of (positive - negative) inside each pair.
``pca-diff-centered``  first principal component of the paired differences, centred first
                (the control-vector recipe).
``pca-diff-uncentered``  first principal direction of the paired differences *not* centred: the top
                singular vector of the rows ``+-(pos - neg)/2`` (the pair members centred on their pair
                midpoint, whose mean is zero); the direction the probes' ``pca-diff-uncentered`` finds.
``probe``       a saved linear probe's direction (``geomprobe.probes.probe_directions``).

One name, one method across stages (:mod:`geomprobe.core.methods`): the old spellings ``pca-diff``
(steering's centred method) and ``pca-center`` (the uncentred one) are still accepted, with a
FutureWarning naming the new name and the same result as before; vector folders saved under them
load under the new names.

PCA directions are unit vectors signed so the positive class projects higher, scaled by the mean
absolute projection of the pair differences on them: multiplier 1 then moves an activation by one
typical pair difference, comparable with ``mean-diff``. Norms are recorded per hook.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geomprobe.core.artifacts import prepare_folder, read_safetensors, read_sidecar, sidecar_fields
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_layer
from geomprobe.core.io import atomic_file, atomic_write_text
from geomprobe.core.labels import binary_labels, choose_positive
from geomprobe.core.methods import CENTERED, RENAMED, UNCENTERED, current_name

FORMAT = "geomprobe-steering-vector"
FORMAT_VERSION = 1
METHODS = ("mean-diff", CENTERED, UNCENTERED)
# Old steering spellings -> current names (geomprobe.core.methods); a vector saved under an old
# spelling holds the direction its new name computes.
RENAMED_METHODS = RENAMED["steering"]
VECTOR_FILE = "vector.safetensors"
SIDECAR_FILE = "vector.json"
_REBUILD = "rebuild the vector with geomprobe steer build"


def _safe_layer(hook: str) -> int:
    try:
        return hook_layer(hook)
    except GeomprobeError:
        return -1


@dataclass
class SteeringVector:
    """One steering direction per hook, with where and how it was read.

    ``vectors[hook]`` is a float32 ``(d_model,)`` tensor read at ``hook`` with ``pooling``
    (``last``, ``mean``, ``probe``...). ``norms[hook]`` is its L2 norm.
    """

    vectors: dict[str, torch.Tensor]
    method: str
    pooling: str
    model_id: str = ""
    d_model: int = 0
    norms: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise GeomprobeError("a steering vector needs at least one hook; got none")
        clean: dict[str, torch.Tensor] = {}
        for hook, value in self.vectors.items():
            tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
            tensor = tensor.detach().to("cpu", torch.float32).reshape(-1).contiguous()
            if not torch.isfinite(tensor).all():
                raise GeomprobeError(f"steering vector for {hook} has NaN or inf values; rebuild it from finite activations")
            clean[str(hook)] = tensor
        widths = {t.numel() for t in clean.values()}
        if len(widths) != 1:
            raise GeomprobeError(f"steering vectors have different widths {sorted(widths)}; build them from one model")
        width = widths.pop()
        if self.d_model and self.d_model != width:
            raise GeomprobeError(f"steering vectors have width {width} but d_model says {self.d_model}; rebuild the vector")
        self.d_model = width
        self.vectors = clean
        self.norms = {hook: float(t.double().norm()) for hook, t in clean.items()}

    @property
    def hooks(self) -> list[str]:
        return list(self.vectors)

    @property
    def layers(self) -> list[int]:
        return [_safe_layer(h) for h in self.vectors]

    def unit(self, hook: str) -> torch.Tensor:
        """The unit direction at ``hook`` (float32)."""
        vec = self.vector_for(hook)
        norm = vec.double().norm()
        if norm == 0:
            raise GeomprobeError(f"steering vector for {hook} is zero; the two classes have equal means there")
        return (vec.double() / norm).float()

    def vector_for(self, hook: str) -> torch.Tensor:
        """The vector to apply at ``hook``: the one read there, or the only one this file holds."""
        if hook in self.vectors:
            return self.vectors[hook]
        if len(self.vectors) == 1:
            return next(iter(self.vectors.values()))
        raise GeomprobeError(
            f"the steering vector has no direction for {hook}; it has {', '.join(self.hooks[:4])}"
            f"{' ...' if len(self.hooks) > 4 else ''} (pick one of those with --hooks)"
        )

    def select(self, hooks: Sequence[str]) -> SteeringVector:
        """A copy holding only ``hooks``."""
        return SteeringVector(
            {h: self.vector_for(h) for h in hooks},
            self.method,
            self.pooling,
            self.model_id,
            self.d_model,
            metadata=dict(self.metadata),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "pooling": self.pooling,
            "model_id": self.model_id,
            "d_model": self.d_model,
            "dtype": "float32",
            "hooks": self.hooks,
            "layers": self.layers,
            "norms": self.norms,
            "metadata": self.metadata,
        }

    # -- persistence ------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``vector.safetensors`` + ``vector.json`` into ``folder`` (created if needed)."""
        from safetensors.torch import save_file

        folder = prepare_folder(folder, SIDECAR_FILE, "steering vector", overwrite)
        sidecar = dict(self.describe(), created_utc=datetime.now(UTC).isoformat(timespec="seconds"))
        from geomprobe.core import __version__

        sidecar["geomprobe_version"] = __version__
        # Each file is written whole under a temporary name; the sidecar goes last, so a folder
        # is a vector only once both are complete.
        with atomic_file(folder / VECTOR_FILE) as tmp:
            save_file({h: t.contiguous() for h, t in self.vectors.items()}, str(tmp), metadata={"format": FORMAT})
        atomic_write_text(folder / SIDECAR_FILE, json.dumps(_jsonable(sidecar), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SteeringVector:
        """Read a folder written by :meth:`save`, checking every field (no pickle involved)."""
        folder = Path(folder)
        vec_path = folder / VECTOR_FILE
        info = read_sidecar(folder, SIDECAR_FILE, VECTOR_FILE, FORMAT, FORMAT_VERSION, "steering vector", _REBUILD)
        fields = sidecar_fields(folder, SIDECAR_FILE, info, _REBUILD)
        hooks = fields.string_list("hooks", non_empty=True)
        d_model = fields.integer("d_model", minimum=1)
        method = fields.text("method")
        pooling = fields.text("pooling", default="")
        model_id = fields.text("model_id", default="")
        metadata = fields.optional("metadata", fields.mapping) or {}
        tensors = read_safetensors(vec_path, _REBUILD, framework="pt")
        if sorted(hooks) != sorted(tensors):
            raise GeomprobeError(
                f"{vec_path} holds hooks {sorted(tensors)} but {SIDECAR_FILE} lists {hooks}; the pair is inconsistent"
            )
        for hook, tensor in tensors.items():
            if tensor.ndim != 1 or tensor.numel() != d_model or not tensor.dtype.is_floating_point:
                raise GeomprobeError(
                    f"{vec_path}: {hook} has shape {tuple(tensor.shape)} and dtype {tensor.dtype}, expected ({d_model},) "
                    f"floats; {_REBUILD}"
                )
        # Saved under an old name: the folder holds the renamed method's direction.
        method = RENAMED_METHODS.get(method, method)
        return cls({h: tensors[h] for h in hooks}, method, pooling, model_id, d_model, metadata=dict(metadata))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def load_vector(folder: str | os.PathLike) -> SteeringVector:
    return SteeringVector.load(folder)


# -- direction math ---------------------------------------------------------------------------
def canonical_method(method: str) -> str:
    """The current name of a steering method; an old spelling is accepted with a FutureWarning."""
    method = current_name(method, "steering", stacklevel=4)
    if method not in METHODS:
        raise GeomprobeError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    return method


def class_masks(
    labels: np.ndarray, label_names: Sequence[str], positive_label: str | None = None, negative_label: str | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Boolean ``(positive, negative)`` row masks and the positive label's name.

    The positive class follows :func:`geomprobe.core.labels.binary_labels` (the one rule for every
    stage); the negative class is ``negative_label`` or every other labelled row.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if negative_label is not None:
        positive_name = str(label_names[choose_positive(label_names, positive_label)])
        choice = binary_labels(labels, label_names, label_pair=(negative_label, positive_name), require_both=False)
    else:
        choice = binary_labels(labels, label_names, positive_label, rest_negative=True, require_both=False)
    positive = np.zeros(len(labels), dtype=bool)
    negative = np.zeros(len(labels), dtype=bool)
    positive[choice.rows[choice.y == 1]] = True
    negative[choice.rows[choice.y == 0]] = True
    return positive, negative, choice.names[1]


def paired_differences(X: np.ndarray, positive: np.ndarray, negative: np.ndarray, pair_ids: np.ndarray | None) -> np.ndarray:
    """``(n_pairs, d)`` float64: per pair, mean of its positive rows minus mean of its negative rows.

    Pairs missing either side are skipped. Returns an empty array when there are no pair ids.
    """
    if pair_ids is None:
        return np.zeros((0, X.shape[1]))
    diffs = []
    for pid in np.unique(pair_ids[pair_ids >= 0]):
        members = pair_ids == pid
        pos, neg = members & positive, members & negative
        if pos.any() and neg.any():
            diffs.append(X[pos].astype(np.float64).mean(0) - X[neg].astype(np.float64).mean(0))
    return np.stack(diffs) if diffs else np.zeros((0, X.shape[1]))


def direction_from_arrays(
    X: np.ndarray,
    positive: np.ndarray,
    negative: np.ndarray,
    pair_ids: np.ndarray | None = None,
    method: str = "mean-diff",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Compute one ``(d,)`` float64 direction from rows ``X`` and boolean class masks."""
    method = canonical_method(method)
    X = np.asarray(X)
    positive, negative = np.asarray(positive, bool), np.asarray(negative, bool)
    n_pos, n_neg = int(positive.sum()), int(negative.sum())
    if n_pos == 0 or n_neg == 0:
        raise GeomprobeError(f"need rows of both classes to build a direction; got {n_pos} positive and {n_neg} negative")
    if not np.all(np.isfinite(X[positive | negative])):
        raise GeomprobeError("activations contain NaN or inf; recreate the cache")
    diffs = paired_differences(X, positive, negative, pair_ids)
    info: dict[str, Any] = {"n_positive": n_pos, "n_negative": n_neg, "n_pairs": int(len(diffs))}
    if method == "mean-diff":
        if len(diffs):
            vec = diffs.mean(0)
            info["averaged_over"] = "pairs"
        else:
            vec = X[positive].astype(np.float64).mean(0) - X[negative].astype(np.float64).mean(0)
            info["averaged_over"] = "classes"
        return vec, info
    if len(diffs) < 2:
        raise GeomprobeError(
            f"method {method} needs at least 2 contrast pairs (pair ids); found {len(diffs)}; use --method mean-diff"
        )
    if method == "pca-diff-centered":
        rows = diffs - diffs.mean(0)
    else:  # pca-diff-uncentered: pair members centred on their pair midpoint, i.e. +-diff/2
        rows = np.concatenate([diffs / 2.0, -diffs / 2.0])
    _, svals, vt = np.linalg.svd(rows, full_matrices=False)
    unit = vt[0]
    proj = diffs @ unit
    if proj.mean() < 0:  # sign so the positive class projects higher
        unit, proj = -unit, -proj
    scale = float(np.abs(proj).mean())
    total = float((svals**2).sum())
    info.update(
        {
            "explained_variance_ratio": float(svals[0] ** 2 / total) if total > 0 else 0.0,
            "scale": scale,
            "scale_definition": "mean |pair difference . unit direction|",
            "sign_agreement": float((proj > 0).mean()),
        }
    )
    return unit * scale, info


def build_from_arrays(
    activations: Mapping[str, np.ndarray],
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    pair_ids: np.ndarray | None = None,
    method: str = "mean-diff",
    pooling: str = "last",
    positive_label: str | None = None,
    negative_label: str | None = None,
    model_id: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> SteeringVector:
    """Build a :class:`SteeringVector` from in-memory ``{hook: (N, d)}`` activations."""
    method = canonical_method(method)
    labels = np.asarray(labels)
    positive, negative, positive_name = class_masks(labels, label_names, positive_label, negative_label)
    vectors, per_hook = {}, {}
    for hook, X in activations.items():
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] != len(labels):
            raise GeomprobeError(f"{hook}: activations of shape {X.shape} do not match {len(labels)} labels")
        vec, info = direction_from_arrays(X, positive, negative, pair_ids, method)
        vectors[hook] = torch.from_numpy(vec.astype(np.float32))
        per_hook[hook] = info
    first = next(iter(per_hook.values()))
    meta = {
        "label_names": list(label_names),
        "positive_label": positive_name,
        "negative_label": negative_label or "all other labels",
        "n_positive": first["n_positive"],
        "n_negative": first["n_negative"],
        "n_pairs": first["n_pairs"],
        "per_hook": {
            h: {k: v for k, v in i.items() if k not in ("n_positive", "n_negative", "n_pairs")} for h, i in per_hook.items()
        },
    }
    meta.update(metadata or {})
    return SteeringVector(vectors, method, pooling, model_id, metadata=meta)


def build_from_cache(
    path: str | os.PathLike,
    *,
    hooks: str | Sequence[str] | None = None,
    pooling: str = "last",
    positive_label: str | None = None,
    negative_label: str | None = None,
    method: str = "mean-diff",
) -> SteeringVector:
    """Build one direction per hook from a geomprobe activation cache (labels and pair ids)."""
    from geomprobe.activations.store import open_cache

    with open_cache(path) as cache:
        chosen = cache.hooks_for(hooks)
        labels, names, pair_ids = cache.labels, cache.label_names, cache.pair_ids
        activations = {h: cache.read(h, pooling) for h in chosen}
        meta = {
            "source": "cache",
            "cache_path": str(Path(path).resolve()),
            "model_revision": str(cache.attrs.get("model_revision", "")),
            "model_dtype": str(cache.attrs.get("model_dtype", "")),
        }
        model_id = cache.model_id
    has_pairs = pair_ids is not None and bool((pair_ids >= 0).any())
    return build_from_arrays(
        activations,
        labels,
        names,
        pair_ids=pair_ids if has_pairs else None,
        method=method,
        pooling=pooling,
        positive_label=positive_label,
        negative_label=negative_label,
        model_id=model_id,
        metadata=meta,
    )


def build_from_probe(probe_dir: str | os.PathLike, *, hooks: Sequence[str] | None = None, model_id: str = "") -> SteeringVector:
    """Use a saved probe's direction(s) (``geomprobe.probes.probe_directions``) as steering vectors."""
    try:
        from geomprobe.probes import probe_directions  # built by the probes stage; imported lazily
    except ImportError:
        raise GeomprobeError(
            "this geomprobe has no probe support (geomprobe.probes.probe_directions); build from a cache instead"
        ) from None
    directions = probe_directions(Path(probe_dir))
    if hooks:
        missing = [h for h in hooks if h not in directions]
        if missing:
            raise GeomprobeError(f"probe {probe_dir} has no direction for {missing[0]}; it has {', '.join(directions)}")
        directions = {h: directions[h] for h in hooks}
    vectors = {h: torch.from_numpy(np.asarray(v, dtype=np.float32).reshape(-1)) for h, v in directions.items()}
    meta: dict[str, Any] = {"source": "probe", "probe_dir": str(Path(probe_dir).resolve())}
    pooling = "probe"
    sidecar = Path(probe_dir) / "probe.json"
    if sidecar.is_file():  # provenance only; the directions come from probe_directions
        try:
            info = json.loads(sidecar.read_text())
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            info = {}
        pooling = str(info.get("pooling") or pooling)
        model_id = model_id or str(info.get("model_id") or "")
        meta.update({k: info[k] for k in ("method", "positive_label", "label_names", "model_revision") if k in info})
        meta["probe_method"] = meta.pop("method", "")
    return SteeringVector(vectors, "probe", pooling, model_id, metadata=meta)


def build_from_prompts(
    model: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    hooks: str | Sequence[str] | None = None,
    method: str = "mean-diff",
    pooling: str = "last",
    paired: bool = True,
    batch_size: int = 8,
) -> SteeringVector:
    """Read activations of ``positive``/``negative`` user prompts from ``model`` and build a vector.

    Prompts are rendered and pooled exactly as ``geomprobe cache`` does (chat template, ``last`` or
    ``mean`` over the message), so the vector matches one built from a cache of the same prompts.
    With ``paired=True`` the i-th positive and i-th negative text form a contrast pair.
    """
    from geomprobe.activations.collect import pooled_activations
    from geomprobe.core.hooks import resolve_hooks

    if paired and len(positive) != len(negative):
        raise GeomprobeError(f"paired prompts need equal counts; got {len(positive)} positive and {len(negative)} negative")
    names = resolve_hooks(hooks, model.n_layers, model.hook_names)
    texts = list(positive) + list(negative)
    pooled = pooled_activations(model, texts, names, poolings=[pooling], batch_size=batch_size)
    acts = {hook: values[pooling] for hook, values in pooled.items()}
    labels = np.array([1] * len(positive) + [0] * len(negative))
    pair_ids = np.concatenate([np.arange(len(positive)), np.arange(len(negative))]) if paired else None
    return build_from_arrays(
        acts,
        labels,
        ["negative", "positive"],
        pair_ids=pair_ids,
        method=method,
        pooling=pooling,
        positive_label="positive",
        model_id=model.model_id,
        metadata={"source": "prompts", "model_revision": model.revision},
    )
