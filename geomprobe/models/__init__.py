"""Models: load a checkpoint as a TransformerLens bridge, move between the bridge and the plain
Hugging Face modules, generate text, and the one table of architecture facts.

* :mod:`.loading` - ``load_model`` / ``load_checkpoint`` ("default", a Hugging Face name, a
  folder or a ``.gguf`` file), GGUF conversion and checkpoint fingerprints.
* :mod:`.bridge` - ``unbridged``, ``is_unbridged``, ``unbridged_agrees``, ``ensure_kv_cache_compat``.
* :mod:`.generation` - ``complete``, the one generation engine (chat rendering, left padding,
  length-sorted batches, per-row stop ids, a hook slot), and ``as_generation_model``, which maps a
  ``LoadedModel``, a ``Checkpoint`` or an ``(hf_model, tokenizer)`` pair onto ``GenerationModel``.
* :mod:`.architecture` - which modules write the residual stream, ``resid_mid`` handling, weight
  layouts and tied embeddings, per ``model_type``.

This module only re-exports.
"""

from geomprobe.core.device import DTYPES, resolve_device, resolve_dtype  # moved to core; kept here for callers
from geomprobe.models.architecture import (
    ARCHITECTURES,
    RESIDUAL_WRITER_NAMES,
    Architecture,
    architecture,
    embeddings_tied,
    model_type,
    model_types_supporting,
    resid_mid_is_attn_sum,
    stores_transposed,
    untie_embeddings,
)
from geomprobe.models.bridge import ensure_kv_cache_compat, is_unbridged, unbridged, unbridged_agrees
from geomprobe.models.generation import (
    Completions,
    GenerationModel,
    PromptBatch,
    as_generation_model,
    complete,
    default_stop_ids,
    render_prompts,
)
from geomprobe.models.loading import (
    DEFAULT_GGUF_FILE,
    DEFAULT_GGUF_PACKAGE,
    DEFAULT_MODEL,
    DEFAULT_MODEL_ID,
    Checkpoint,
    LoadedModel,
    default_gguf_path,
    file_sha256,
    folder_fingerprint,
    geomprobe_home,
    load_checkpoint,
    load_model,
)

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "Checkpoint",
    "Completions",
    "GenerationModel",
    "PromptBatch",
    "as_generation_model",
    "complete",
    "default_stop_ids",
    "render_prompts",
    "DEFAULT_GGUF_FILE",
    "DEFAULT_GGUF_PACKAGE",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_ID",
    "DTYPES",
    "LoadedModel",
    "RESIDUAL_WRITER_NAMES",
    "architecture",
    "default_gguf_path",
    "embeddings_tied",
    "ensure_kv_cache_compat",
    "file_sha256",
    "folder_fingerprint",
    "geomprobe_home",
    "is_unbridged",
    "load_checkpoint",
    "load_model",
    "model_type",
    "model_types_supporting",
    "resid_mid_is_attn_sum",
    "resolve_device",
    "resolve_dtype",
    "stores_transposed",
    "unbridged",
    "unbridged_agrees",
    "untie_embeddings",
]
