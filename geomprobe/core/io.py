"""File output in one place: atomic writes, JSON, and the checks made before long work starts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from geomprobe.core.errors import GeomprobeError


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON atomically (never a half-written file under the final name); NaN becomes null."""
    path = Path(path)
    if path.is_dir():
        raise GeomprobeError(f"--json {str(path)!r} is a directory; give a file name")
    if not path.parent.exists():
        raise GeomprobeError(f"folder {str(path.parent)!r} for {path.name} does not exist; create it first")

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            return clean(value.item())
        if hasattr(value, "tolist"):
            return clean(value.tolist())
        return value

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(clean(payload), indent=2) + "\n")
    tmp.replace(path)
    return path


def check_new_file(path: str | Path | None, what: str) -> None:
    """Fail early (before long work) when an output file cannot be written."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise GeomprobeError(f"{what} {str(path)!r} is a directory; give a file name")
    if not path.parent.exists():
        raise GeomprobeError(f"folder {str(path.parent)!r} for {what} does not exist; create it first")
