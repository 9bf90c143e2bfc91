"""The probe-kind registry: a kind is a params dataclass plus a batched fit function, registered once.

:func:`register_probe_kind` adds one; :func:`~geomprobe.probes.fit_layers`, :class:`ProbeSweep`,
:class:`~geomprobe.probes.ProbeEstimator`, :func:`~geomprobe.probes.train_probes`, persistence, the
CLI's ``--method``/``--param`` and the audit's probe section all read :data:`PROBE_KINDS`. The built-in
kinds (``logistic``, ``mean-diff``, ``lda``, ``pca-diff-uncentered``) are registered the same way in
:mod:`geomprobe.probes.builtin`.

A fit function receives a :class:`ProbeData` (all layers at once: ``X`` of shape ``(L, N, d)``) and the
kind's params instance, and returns a :class:`KindFit` with ``(L, d)`` coefficients and ``(L,)``
intercepts in the space of ``X``; the score is ``X . coef + intercept`` there.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.methods import current_name


@dataclass
class ProbeData:
    """What a fit function sees: every layer's training rows, prepared by ``fit_layers``.

    ``X`` (L, N, d): standardised when the fit asked for it; for a kind registered with
    ``scales_itself=True`` it is only centred, in the cache's float dtype, and the features are
    ``X / scale`` (the solver folds ``scale`` into its weights so X is never copied).
    """

    X: torch.Tensor
    y: torch.Tensor  # (N,) int64 in {0, 1}, on X's device
    pairs: np.ndarray | None  # (N,) pair ids, -1 = unpaired
    scale: torch.Tensor  # (L, d) float64
    dtype: torch.dtype  # float dtype for the fit's own arithmetic

    @property
    def labels(self) -> np.ndarray:
        return self.y.cpu().numpy()


@dataclass
class KindFit:
    """A fit function's result: ``(L, d)`` coefficients, ``(L,)`` intercepts, and what to record."""

    coef: torch.Tensor
    intercept: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)  # recorded next to the params (e.g. n_pairs)
    n_iter: np.ndarray | None = None
    converged: np.ndarray | None = None


FitFunction = Callable[[ProbeData, Any], KindFit]


@dataclass(frozen=True)
class ProbeKind:
    name: str
    params_cls: type
    fit: FitFunction
    aliases: tuple[str, ...] = ()
    standardize: bool = False  # the default of fit_layers(standardize=None)
    scales_itself: bool = False  # X stays in its dtype, centred only; the fit divides by data.scale
    description: str = ""

    def make_params(self, params: Any = None, **kwargs: Any) -> Any:
        """The kind's params instance from an instance, a mapping and/or keywords (unknown keys refused)."""
        if isinstance(params, self.params_cls):
            if not kwargs:
                return params
            return dataclasses.replace(params, **check_keys(self, kwargs))  # type: ignore[type-var]
        values = {**dict(params or {}), **kwargs}
        return self.params_cls(**check_keys(self, values))

    def param_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.params_cls)]


PROBE_KINDS: dict[str, ProbeKind] = {}
_ALIASES: dict[str, str] = {}


def register_probe_kind(
    name: str,
    params_cls: type,
    fit: FitFunction,
    *,
    aliases: Iterable[str] = (),
    standardize: bool = False,
    scales_itself: bool = False,
    description: str = "",
) -> ProbeKind:
    """Add a probe kind: ``params_cls`` a dataclass with a default for every field (validate in its
    ``__post_init__`` by raising GeomprobeError), ``fit(data: ProbeData, params) -> KindFit``."""
    if not dataclasses.is_dataclass(params_cls) or not isinstance(params_cls, type):
        raise GeomprobeError(f"probe kind {name!r}: params_cls must be a dataclass type")
    missing = [
        f.name
        for f in dataclasses.fields(params_cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise GeomprobeError(f"probe kind {name!r}: give every params field a default ({', '.join(missing)} has none)")
    taken = [n for n in (name, *aliases) if n in PROBE_KINDS or n in _ALIASES]
    if taken:
        raise GeomprobeError(f"probe kind name {taken[0]!r} is already registered; choose another name")
    kind = ProbeKind(name, params_cls, fit, tuple(aliases), standardize, scales_itself, description)
    PROBE_KINDS[name] = kind
    _ALIASES.update({alias: name for alias in aliases})
    return kind


def unregister_probe_kind(name: str) -> None:
    """Remove a kind added with :func:`register_probe_kind` (tests do, so the registry stays clean)."""
    if name not in PROBE_KINDS:
        raise GeomprobeError(f"no probe kind named {name!r}; registered: {', '.join(PROBE_KINDS)}")
    kind = PROBE_KINDS.pop(name)
    for alias in kind.aliases:
        _ALIASES.pop(alias, None)


def method_names() -> tuple[str, ...]:
    """The registered kinds' names (the CLI's ``--method`` choices)."""
    return tuple(PROBE_KINDS)


def canonical_method(method: str, *, warn: bool = True, depth: int = 1) -> str:
    """The registered kind a name, alias or old spelling stands for (an old spelling warns once per call;
    see :mod:`geomprobe.core.methods`). ``depth``: frames above the caller the warning points at."""
    text = str(method).lower()
    name = current_name(text, "probes", warn=warn, stacklevel=2 + depth)
    name = _ALIASES.get(name, name)
    if name not in PROBE_KINDS:
        hint = "; the centred PCA is a steering method only" if name == "pca-diff-centered" else ""
        raise GeomprobeError(f"unknown probe method {method!r}; use one of {', '.join(PROBE_KINDS)}{hint}")
    return name


def probe_kind(method: str, *, warn: bool = True, depth: int = 1) -> ProbeKind:
    """The registered :class:`ProbeKind` of a name, alias or old spelling."""
    return PROBE_KINDS[canonical_method(method, warn=warn, depth=depth + 1)]


def check_keys(kind: ProbeKind, values: Mapping[str, Any]) -> dict[str, Any]:
    valid = kind.param_names()
    bad = [k for k in values if k not in valid]
    if bad:
        raise GeomprobeError(
            f"{kind.name} has no parameter {bad[0]!r}; valid: {', '.join(valid) if valid else 'none (it takes no parameters)'}"
        )
    return dict(values)


# -- --param key=value -------------------------------------------------------------------------------
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _convert(text: str, annotation: Any) -> Any:
    """``text`` as a value of the annotated type (bool, int, float, str, None, Literal, and unions of them)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if type(None) in options and text.lower() in ("none", "null"):
            return None
        for option in sorted((o for o in options if o is not type(None)), key=lambda o: o is str):
            try:
                return _convert(text, option)
            except ValueError:
                continue
        raise ValueError(text)
    if origin is typing.Literal:
        for choice in typing.get_args(annotation):
            if str(choice) == text:
                return choice
        raise ValueError(text)
    if annotation is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(text)
    if annotation in (int, float, str):
        return annotation(text)
    if annotation is type(None):
        if text.lower() in ("none", "null"):
            return None
        raise ValueError(text)
    raise ValueError(text)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    return "none" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def parse_param_args(kind: ProbeKind, items: Sequence[str]) -> dict[str, Any]:
    """``["C=0.5", "fit_intercept=true"]`` as typed values of ``kind``'s params dataclass.

    One-line errors name the bad item and the valid keys (and the expected type for a bad value).
    """
    hints = typing.get_type_hints(kind.params_cls)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise GeomprobeError(
                f"--param {item!r} is not KEY=VALUE; valid keys for {kind.name}: {', '.join(kind.param_names()) or 'none'}"
            )
        check_keys(kind, {key: None})
        try:
            out[key] = _convert(text.strip(), hints[key])
        except ValueError:
            raise GeomprobeError(f"--param {key}={text!r}: {kind.name}'s {key} takes {_type_name(hints[key])}") from None
    return out


def params_record(params: Any) -> dict[str, Any]:
    """A params instance as the JSON-safe dict saved with a probe."""
    return dataclasses.asdict(params)
