"""geomprobe: latent-geometry safety diagnostics for language models.

The public entry points of each stage live in their packages (``geomprobe.activations``,
``geomprobe.aqi``, ``geomprobe.subspace``, ``geomprobe.probes``, ``geomprobe.steering``,
``geomprobe.audit``); the most used ones are re-exported here. Stage code never imports this
module (docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geomprobe.core import __version__
from geomprobe.core.errors import GeomprobeError

if TYPE_CHECKING:
    from geomprobe.activations.store import CacheFile, open_cache, read_activations, read_labels, write_cache

_FROM_STORE = ("CacheFile", "open_cache", "read_activations", "read_labels", "write_cache")


def __getattr__(name: str) -> Any:
    # numpy and h5py load on first use: `python -m geomprobe` starts inside the CLI's Ctrl-C handling.
    if name in _FROM_STORE:
        from geomprobe.activations import store

        return getattr(store, name)
    raise AttributeError(f"module 'geomprobe' has no attribute {name!r}")


def load_model(*args: Any, **kwargs: Any) -> Any:
    """Load a model as a TransformerBridge; see :func:`geomprobe.models.load_model`."""
    from geomprobe.models import load_model as _load  # torch/transformers load only when asked

    return _load(*args, **kwargs)


def run_audit(*args: Any, **kwargs: Any) -> Any:
    """Audit a checkpoint (optionally against a second); see :func:`geomprobe.audit.run_audit`."""
    from geomprobe.audit import run_audit as _run

    return _run(*args, **kwargs)


__all__ = [
    "run_audit",
    "GeomprobeError",
    "CacheFile",
    "open_cache",
    "read_activations",
    "read_labels",
    "write_cache",
    "load_model",
    "__version__",
]
