"""Artefact folders shared by probes and steering vectors: tensors in safetensors, a JSON sidecar.

One place for the checks both need: where a new folder may be written, and how a folder handed
to us is read without ever unpickling anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import PathLike, check_output_folder, translate_write_errors
from geomprobe.core.validate import Fields, parse_json


def prepare_folder(folder: PathLike, sidecar: str, what: str, overwrite: bool) -> Path:
    """Create ``folder`` for a new ``what``, refusing a file, one already holding a ``what``, or a missing parent.

    Other files in an existing folder are left alone; the ``what``'s own files are each written
    atomically by the caller (``geomprobe.core.io.atomic_file``).
    """
    folder = check_output_folder(folder, overwrite=overwrite, what=what, holds=sidecar)
    with translate_write_errors(folder):
        folder.mkdir(exist_ok=True)
    return folder


def read_sidecar(folder: str | Path, sidecar: str, tensors: str, fmt: str, version: int, what: str, fix: str) -> dict[str, Any]:
    """The checked sidecar of a ``what`` folder holding ``sidecar`` and ``tensors``; ``fix`` says how to remake it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GeomprobeError(f"{what} folder {str(folder)!r} does not exist; {fix}")
    side_path = folder / sidecar
    if not side_path.is_file() or not (folder / tensors).is_file():
        raise GeomprobeError(f"{str(folder)!r} lacks {sidecar} or {tensors}; it is not a {what} folder")
    try:
        text = side_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GeomprobeError(f"{str(side_path)!r} is not valid JSON (not UTF-8 text); {fix}") from None
    side = parse_json(text, repr(str(side_path)), fix)
    if not isinstance(side, dict) or side.get("format") != fmt:
        raise GeomprobeError(f"{str(side_path)!r} is not a geomprobe {what} sidecar; {fix}")
    found = Fields(side, repr(str(side_path)), fix).integer("format_version", minimum=0)
    if found > version:
        raise GeomprobeError(f"{str(side_path)!r} has format version {found}, newer than this geomprobe; upgrade it")
    return side


def sidecar_fields(folder: str | Path, sidecar: str, side: dict[str, Any], fix: str) -> Fields:
    """Typed, checked access to a sidecar read by :func:`read_sidecar` (errors say it is damaged)."""
    return Fields(side, repr(str(Path(folder) / sidecar)), fix)


def read_safetensors(path: str | Path, fix: str, framework: str = "np") -> dict[str, Any]:
    """Tensors of a safetensors file; a pickle or torch.save file under that name is refused unread."""
    from safetensors import safe_open

    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(9)
    # A safetensors file starts with its header's length (u64, little-endian) and then "{"; that length
    # can itself begin with byte 0x80 or "PK", so only a file that is not laid out so is called a pickle.
    plausible = head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size
    if not plausible and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise GeomprobeError(f"{str(path)!r} looks like a pickle/torch.save file, which geomprobe never loads; {fix}")
    try:
        with safe_open(str(path), framework=framework) as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise GeomprobeError(f"{str(path)!r} is not a valid safetensors file ({type(exc).__name__}); {fix}") from None
