"""The ``metrics.json`` schema of ``geomprobe audit``: every field, its type and meaning.

The schema is a flat list of dotted paths (``[]`` marks the items of a list), assembled from the
run's own fields and each section's declaration (:mod:`geomprobe.audit.sections`). It drives three
things: :func:`validate_metrics` (a written file matches the version it claims),
``--fail-if`` path checks made before any work (:mod:`geomprobe.audit.conditions`), and the
field table in ``docs/audit.md`` (:func:`schema_markdown`). Bump :data:`SCHEMA_VERSION` when a
field is renamed, removed or changes meaning; adding a field keeps the version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomprobe.audit.sections import SECTIONS, FieldSpec
from geomprobe.core.errors import GeomprobeError

SCHEMA_NAME = "geomprobe-audit"
SCHEMA_VERSION = 1

# Field types: see geomprobe.audit.sections.base.FieldSpec.
_PROVENANCE = [
    ("model_id", "string", "model name, or the resolved folder / GGUF stem"),
    ("model_source", "string", "where the weights were read from (folder, .gguf file or hub name)"),
    ("model_revision", "string", "content fingerprint: `gguf-sha256:...`, `folder:...` or a hub revision"),
    ("model_dtype", "string", "dtype the forward passes ran in (float32, bfloat16, float16)"),
    ("device", "string", "device the forward passes ran on"),
    ("gguf_sha256", "string", "SHA-256 of the GGUF file, empty for other sources"),
    ("n_layers", "integer", "number of transformer blocks"),
    ("d_model", "integer", "residual-stream width"),
]

# The orchestrator's own fields: header, provenance and the run-wide settings.
_RUN_FIELDS: list[FieldSpec] = [
    ("schema", "string", f"always `{SCHEMA_NAME}`"),
    ("schema_version", "integer", f"version of this layout (now {SCHEMA_VERSION})"),
    ("geomprobe_version", "string", "geomprobe version that wrote the file"),
    ("created_utc", "string", "ISO 8601 time the audit finished"),
    ("model", "object", "provenance of the audited checkpoint"),
    *[(f"model.{k}", t, d) for k, t, d in _PROVENANCE],
    ("against", "object|null", "provenance of the `--against` checkpoint (same fields as `model`), null without it"),
    *[(f"against.{k}", t, d) for k, t, d in _PROVENANCE],
    ("settings", "object", "everything that decides the numbers"),
    ("settings.quick", "bool", "`--quick` sizes were used"),
    ("settings.seed", "integer", "seed of every random choice (subsets, splits, bootstrap, permutations)"),
    ("settings.hook_kind", "string", "hook read at every layer (`resid_post`: the output of block l)"),
    ("settings.hooks", "list[string]", "hooks audited, in layer order"),
    ("settings.layers", "list[integer]", "block indices audited"),
    ("settings.batch_size", "integer", "prompts per forward pass when caching"),
    ("settings.metric_dtype", "string", "dtype every metric was computed in (float64)"),
    ("settings.store_dtype", "string", "dtype activations were stored in (float32)"),
]
_TIMINGS = ("timings_s", "object", "wall-clock seconds per stage (`load`, `cache`, `aqi`, ...)")

# Every field in metrics.json order: the run's, each section's settings, the timings, each section's results.
FIELDS: list[FieldSpec] = [
    *_RUN_FIELDS,
    *[f for section in SECTIONS for f in section.settings_fields],
    _TIMINGS,
    *[f for section in SECTIONS for f in section.fields],
]
# Top-level keys that only exist with a second checkpoint (``--fail-if`` on them needs ``--against``).
AGAINST_ONLY = ("against", *[s.name for s in SECTIONS if s.needs_against])

AGGREGATIONS = ("max", "min", "mean", "median", "sum", "count", "first", "last")


@dataclass(frozen=True)
class Field:
    path: str
    type: str
    doc: str

    @property
    def is_list(self) -> bool:
        return self.type.startswith("list[")

    @property
    def nullable(self) -> bool:
        return self.type.endswith("|null")


FIELD_MAP: dict[str, Field] = {p: Field(p, t, d) for p, t, d in FIELDS}


def children(path: str) -> list[str]:
    """Names directly under ``path`` (``path[]`` for list items)."""
    prefix = path + "." if path else ""
    out = []
    for p in FIELD_MAP:
        if p.startswith(prefix):
            name = p[len(prefix):].split(".")[0]
            if name not in out:
                out.append(name)
    return out


_PYTYPES: dict[str, tuple[type, ...]] = {
    "number": (int, float),
    "integer": (int,),
    "string": (str,),
    "bool": (bool,),
    "object": (dict,),
}


def _type_ok(value: Any, kind: str) -> bool:
    options = kind.split("|")
    if value is None:
        # numbers may be null (NaN/inf are written as null); so may anything marked |null
        return "null" in options or any(o in ("number", "list[number]") for o in options)
    for option in options:
        if option.startswith("list["):
            if isinstance(value, list) and all(_type_ok(v, option[5:-1]) for v in value):
                return True
        elif option in _PYTYPES:
            if isinstance(value, bool) and option not in ("bool",):
                continue
            if isinstance(value, _PYTYPES[option]):
                return True
    return False


def validate_metrics(metrics: dict[str, Any]) -> list[str]:
    """Problems with ``metrics`` against the schema (empty when it conforms).

    Checks that every documented field of each present object is there with the right type,
    and that no undocumented field appears.
    """
    problems: list[str] = []
    if metrics.get("schema") != SCHEMA_NAME:
        problems.append(f"schema is {metrics.get('schema')!r}, expected {SCHEMA_NAME!r}")
    if metrics.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version is {metrics.get('schema_version')!r}, expected {SCHEMA_VERSION}")

    def walk(value: Any, path: str, norm: str) -> None:
        if isinstance(value, dict):
            if norm == "timings_s":
                return  # free-form stage names
            for key, child in value.items():
                child_path = f"{path}.{key}" if path else key
                child_norm = f"{norm}.{key}" if norm else key
                if child_norm not in FIELD_MAP and f"{norm}.*" in FIELD_MAP:
                    child_norm = f"{norm}.*"  # free keys (prompt-set roles, instruction conditions, grades)
                field = FIELD_MAP.get(child_norm)
                if field is None:
                    problems.append(f"undocumented field {child_path}")
                    continue
                if not _type_ok(child, field.type):
                    problems.append(f"{child_path}: {type(child).__name__} is not {field.type}")
                    continue
                walk(child, child_path, child_norm)
            for name in children(norm):
                if not name.endswith("[]") and name != "*" and name not in value:
                    problems.append(f"missing field {path + '.' if path else ''}{name}")
        elif isinstance(value, list) and any(p.startswith(norm + "[].") for p in FIELD_MAP):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    walk(item, f"{path}[{i}]", norm + "[]")

    walk(metrics, "", "")
    return problems


def schema_markdown() -> str:
    """The field table of ``docs/audit.md``."""
    lines = ["| field | type | meaning |", "|---|---|---|"]
    for path, kind, doc in FIELDS:
        lines.append(f"| `{path}` | {kind} | {doc} |")
    return "\n".join(lines)


def check_schema_header(metrics: dict[str, Any], where: str = "metrics") -> None:
    """Refuse a file that is not an audit of a version this geomprobe reads."""
    if not isinstance(metrics, dict) or metrics.get("schema") != SCHEMA_NAME:
        raise GeomprobeError(f"{where} is not a geomprobe audit metrics file (no schema {SCHEMA_NAME!r})")
    version = metrics.get("schema_version")
    if version != SCHEMA_VERSION:
        raise GeomprobeError(
            f"{where} has schema_version {version!r}; this geomprobe reads version {SCHEMA_VERSION} (re-run geomprobe audit)"
        )
