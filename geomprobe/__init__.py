"""geomprobe: latent-geometry safety diagnostics for language models."""

__version__ = "0.1.0"

from .errors import GeomprobeError  # noqa: E402
from .store import CacheFile, open_cache, read_activations, read_labels, write_cache  # noqa: E402


def load_model(*args, **kwargs):
    """Load a model as a TransformerBridge; see :func:`geomprobe.models.load_model`."""
    from .models import load_model as _load

    return _load(*args, **kwargs)


def run_audit(*args, **kwargs):
    """Audit a checkpoint (optionally against a second); see :func:`geomprobe.audit.run_audit`."""
    from .audit import run_audit as _run

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
