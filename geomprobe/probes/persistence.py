"""Save and load probes as safetensors + a JSON sidecar; never pickle.

A probe folder holds::

    probe.safetensors   float64 tensors per hook: "{hook}.coef", "{hook}.intercept" (1,),
                        "{hook}.mean", "{hook}.scale", "{hook}.direction" (raw-space weights)
    probe.json          format, format_version, method (the probe kind), params (the kind's params,
                        standardize and what the fit recorded), hooks, layers, pooling,
                        positive_label, label_names, model_id, model_revision, d_model,
                        data_sha256, split, metrics, geomprobe_version, created_utc
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.core.artifacts import prepare_folder, read_safetensors, read_sidecar, sidecar_fields
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import atomic_file, write_json
from geomprobe.core.methods import current_name
from geomprobe.probes.sweep import LayerFit

FORMAT = "geomprobe-probe"
FORMAT_VERSION = 1
TENSORS = "probe.safetensors"
SIDECAR = "probe.json"
_REMAKE = "re-save the probe with geomprobe probe train"
_KEYS = ("coef", "intercept", "mean", "scale", "direction")


def data_sha256(arrays: list[np.ndarray], labels: np.ndarray) -> str:
    """SHA-256 of float32 activations (in the given order) and int64 labels."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


@dataclass
class ProbeSet:
    """One linear probe per hook plus everything needed to re-apply it safely."""

    hooks: list[str]
    fit: LayerFit  # row i belongs to hooks[i]
    pooling: str = "last"
    positive_label: str = "positive"
    label_names: list[str] = field(default_factory=list)
    model_id: str = ""
    model_revision: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # split, data hash, metrics, ...

    @property
    def method(self) -> str:
        return self.fit.method

    @property
    def d_model(self) -> int:
        return self.fit.d_model

    @property
    def kind_params(self) -> Any:
        """The kind's params dataclass as the probe was fitted with (its kind must be registered)."""
        from geomprobe.probes.kinds import probe_kind

        kind = probe_kind(self.method, warn=False)
        return kind.make_params({k: self.fit.params[k] for k in kind.param_names() if k in self.fit.params})

    @property
    def layers(self) -> list[int]:
        from geomprobe.core.hooks import hook_layer

        out = []
        for hook in self.hooks:
            try:
                out.append(hook_layer(hook))
            except GeomprobeError:
                out.append(-1)
        return out

    def index(self, hook: str) -> int:
        if hook not in self.hooks:
            raise GeomprobeError(
                f"this probe has no hook {hook!r}; it was trained on {', '.join(self.hooks[:4])}"
                + (" ..." if len(self.hooks) > 4 else "")
            )
        return self.hooks.index(hook)

    def direction(self, hook: str) -> np.ndarray:
        """Raw-activation-space weight vector (d,) for ``hook``."""
        return self.fit.direction[self.index(hook)]

    def decision_function(self, hook: str, X: np.ndarray) -> np.ndarray:
        """Probe scores (N,) for raw activations ``X`` (N, d) at ``hook``; > 0 leans positive."""
        i = self.index(hook)
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.d_model:
            raise GeomprobeError(f"activations at {hook} have shape {X.shape}; this probe expects width d_model={self.d_model}")
        if not np.all(np.isfinite(X)):
            raise GeomprobeError(f"activations at {hook} contain NaN or inf; recompute or drop those rows")
        return X.astype(np.float64, copy=False) @ self.fit.direction[i] + float(self.fit.raw_intercept[i])

    def predict_proba(self, hook: str, X: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        return expit(self.decision_function(hook, X))

    def sidecar(self) -> dict[str, Any]:
        from geomprobe.core import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "params": self.fit.params,
            "hooks": list(self.hooks),
            "layers": self.layers,
            "pooling": self.pooling,
            "positive_label": self.positive_label,
            "label_names": list(self.label_names),
            "model_id": self.model_id,
            "model_revision": self.model_revision,
            "d_model": self.d_model,
            "score": "((x - mean) / scale) . coef + intercept  ==  x . direction + raw_intercept",
            "n_iter": None if self.fit.n_iter is None else [int(v) for v in self.fit.n_iter],
            "converged": None if self.fit.converged is None else [bool(v) for v in self.fit.converged],
            **self.meta,
            "geomprobe_version": __version__,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def save_probe(probes: ProbeSet, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``probe.safetensors`` and ``probe.json`` into ``folder`` (created if needed)."""
    from safetensors.numpy import save_file

    folder = prepare_folder(folder, SIDECAR, "probe", overwrite)
    tensors: dict[str, np.ndarray] = {}
    fit = probes.fit
    for i, hook in enumerate(probes.hooks):
        tensors[f"{hook}.coef"] = np.ascontiguousarray(fit.coef[i], dtype=np.float64)
        tensors[f"{hook}.intercept"] = np.array([fit.intercept[i]], dtype=np.float64)
        tensors[f"{hook}.mean"] = np.ascontiguousarray(fit.mean[i], dtype=np.float64)
        tensors[f"{hook}.scale"] = np.ascontiguousarray(fit.scale[i], dtype=np.float64)
        tensors[f"{hook}.direction"] = np.ascontiguousarray(fit.direction[i], dtype=np.float64)
    # The sidecar goes last: a folder is a probe only once both files are complete.
    with atomic_file(folder / TENSORS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "method": probes.method})
    write_json(folder / SIDECAR, probes.sidecar())
    return folder


def load_probe(
    folder: str | Path,
    *,
    expect_model_id: str | None = None,
    expect_d_model: int | None = None,
    expect_hooks: list[str] | None = None,
    allow_model_mismatch: bool = False,
) -> ProbeSet:
    """Load a probe folder written by :func:`save_probe`, checking it against what it will see."""
    folder = Path(folder)
    tensor_path = folder / TENSORS
    side = read_sidecar(folder, SIDECAR, TENSORS, FORMAT, FORMAT_VERSION, "probe", _REMAKE)
    fields = sidecar_fields(folder, SIDECAR, side, _REMAKE)
    hooks = fields.string_list("hooks", non_empty=True)
    d_model = fields.integer("d_model", minimum=1)
    # A folder saved under an old spelling (e.g. "pca-diff") loads under the current name; a kind that is
    # not registered here (a plugin not imported) still loads: scoring needs only the saved direction.
    method = current_name(fields.text("method"), "probes", warn=False)
    pooling = fields.text("pooling", default="last")
    positive_label = fields.text("positive_label", default="")
    label_names = fields.string_list("label_names", default=[], unique=True)
    # The model identity is what the mismatch check compares; a missing key would switch it off.
    model_id = fields.text("model_id")
    model_revision = fields.text("model_revision", default="")
    params = fields.optional("params", fields.mapping) or {}
    tensors = read_safetensors(tensor_path, _REMAKE)
    stacked: dict[str, np.ndarray] = {}
    for key in _KEYS:
        rows = []
        for hook in hooks:
            name = f"{hook}.{key}"
            if name not in tensors:
                raise GeomprobeError(f"{str(tensor_path)!r} lacks tensor {name!r}; the probe folder is damaged")
            row = np.asarray(tensors[name], dtype=np.float64)
            want = (1,) if key == "intercept" else (d_model,)
            if row.shape != want:
                raise GeomprobeError(
                    f"{str(tensor_path)!r}: tensor {name!r} has shape {row.shape} but the sidecar's d_model={d_model} "
                    f"needs {want}; the probe folder is damaged, {_REMAKE}"
                )
            rows.append(row)
        stacked[key] = np.stack(rows)
    for key, array in stacked.items():
        if not np.isfinite(array).all():
            raise GeomprobeError(f"{str(tensor_path)!r} holds NaN or inf in {key!r}; the probe folder is damaged, {_REMAKE}")
    _check_derived(stacked, hooks, tensor_path)
    fit = LayerFit(method, stacked["coef"], stacked["intercept"][:, 0], stacked["mean"], stacked["scale"], dict(params))
    keep = {
        "format",
        "format_version",
        "method",
        "params",
        "hooks",
        "layers",
        "pooling",
        "positive_label",
        "label_names",
        "model_id",
        "model_revision",
        "d_model",
        "score",
        "n_iter",
        "converged",
        "geomprobe_version",
        "created_utc",
    }
    meta = {k: v for k, v in side.items() if k not in keep}
    meta["created_utc"] = side.get("created_utc")
    probes = ProbeSet(hooks, fit, pooling, positive_label, label_names, model_id, model_revision, meta)
    check_compatible(
        probes,
        model_id=expect_model_id,
        d_model=expect_d_model,
        hooks=expect_hooks,
        allow_model_mismatch=allow_model_mismatch,
        where="the expected model",
    )
    return probes


def _check_derived(stacked: dict[str, np.ndarray], hooks: list[str], tensor_path: Path) -> None:
    """The stored ``direction`` must be ``coef / scale``: scores use the one, steering the other."""
    if (stacked["scale"] <= 0).any():
        raise GeomprobeError(f"{str(tensor_path)!r} holds a scale <= 0; the probe folder is damaged, {_REMAKE}")
    derived = stacked["coef"] / stacked["scale"]
    for i, hook in enumerate(hooks):
        stored = stacked["direction"][i]
        tolerance = 1e-6 * max(float(np.abs(derived[i]).max()), 1e-300)
        if not np.allclose(stored, derived[i], rtol=1e-6, atol=tolerance):
            raise GeomprobeError(
                f"{str(tensor_path)!r}: tensor '{hook}.direction' is not coef / scale (changed after it was written); "
                f"the probe folder is damaged, {_REMAKE}"
            )


def check_compatible(
    probes: ProbeSet,
    *,
    model_id: str | None = None,
    d_model: int | None = None,
    hooks: list[str] | None = None,
    allow_model_mismatch: bool = False,
    where: str = "the cache",
) -> bool:
    """Raise on width/hook mismatch; on model-id mismatch raise unless allowed. True if ids differ.

    ``model_id=None`` skips the identity check (the caller has none to compare); otherwise the ids
    are compared exactly, an empty one (nothing recorded) included: an id left empty or erased
    never switches the check off.
    """
    if d_model is not None and int(d_model) != probes.d_model:
        raise GeomprobeError(
            f"{where} has width d_model={d_model} but the probe was trained at d_model={probes.d_model}; "
            "use a probe trained on this model"
        )
    if hooks is not None:
        missing = [h for h in probes.hooks if h not in hooks]
        if len(missing) == len(probes.hooks):
            raise GeomprobeError(
                f"{where} has none of the probe's hooks ({', '.join(probes.hooks[:3])}...); "
                "cache those hooks or retrain the probe"
            )
    mismatch = model_id is not None and str(model_id) != str(probes.model_id)
    if mismatch and not allow_model_mismatch:
        raise GeomprobeError(
            f"probe was trained on model {probes.model_id or '(none recorded)'!r} but {where} is from "
            f"{model_id or '(none recorded)'!r}; pass --allow-model-mismatch (allow_model_mismatch=True) to transfer on purpose"
        )
    return mismatch


def probe_directions(folder: str | Path, hooks: list[str] | None = None) -> dict[str, np.ndarray]:
    """Raw-space weight vector per hook (not normalised), for the steering stage."""
    probes = load_probe(folder)
    chosen = probes.hooks if hooks is None else hooks
    return {hook: probes.direction(hook).copy() for hook in chosen}
