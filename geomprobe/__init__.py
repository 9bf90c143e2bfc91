"""geomprobe: latent-geometry safety diagnostics for language models."""

__version__ = "0.1.0"

from .errors import GeomprobeError  # noqa: E402
from .store import CacheFile, open_cache, read_activations, read_labels, write_cache  # noqa: E402


def load_model(*args, **kwargs):
    """Load a model as a TransformerBridge; see :func:`geomprobe.models.load_model`."""
    from .models import load_model as _load

    return _load(*args, **kwargs)


__all__ = [
    "GeomprobeError",
    "CacheFile",
    "open_cache",
    "read_activations",
    "read_labels",
    "write_cache",
    "load_model",
    "__version__",
]
