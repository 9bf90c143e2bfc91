"""The audit's section registry, and the sizes of a run (one sizes dataclass per registered section).

:data:`SECTIONS` is the list the orchestrator, the schema and the report read, in order: the
built-in sections are registered by :mod:`geomprobe.audit.sections`; :func:`register_section`
adds another (before the sections that need ``--against``, unless ``before`` says where) and
:func:`unregister_section` takes it out again. The schema follows every change.

:class:`AuditSizes` holds how much work each section does, keyed by section name: each section
declares its sizes as a frozen dataclass (its ``Sizes``) with the default and the ``--quick``
value of every field side by side (:func:`geomprobe.audit.spec.size`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass, replace
from typing import Any

from geomprobe.audit.spec import quick_sizes
from geomprobe.core.errors import GeomprobeError

# Every registered section (geomprobe.audit.sections.base.AuditSection instances), in run order.
SECTIONS: list[Any] = []
_LISTENERS: list[Callable[[], None]] = []
# metrics.json keys of the run itself: no section may take one.
RESERVED = ("schema", "schema_version", "geomprobe_version", "created_utc", "model", "against", "settings", "timings_s")


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener()`` after every (un)registration (the schema rebuilds itself this way)."""
    _LISTENERS.append(listener)


def _changed() -> None:
    for listener in _LISTENERS:
        listener()


def find_section(name: str) -> Any:
    """The registered section called ``name``."""
    for section in SECTIONS:
        if section.name == name:
            return section
    raise GeomprobeError(f"no audit section {name!r}; registered: {', '.join(s.name for s in SECTIONS)}")


def register_section(section: Any, *, before: str | None = None) -> Any:
    """Add ``section`` (an ``AuditSection``) to the audit; return it.

    It goes before the section named ``before``, else before the first section that needs
    ``--against`` (those read every other section's results), else last.
    """
    name = getattr(section, "name", "")
    if not name or name in RESERVED or hasattr(AuditSizes, name) or any(s.name == name for s in SECTIONS):
        raise GeomprobeError(f"cannot register audit section {name!r}: the name is empty, reserved or taken")
    section.schema_fields()  # every field documented, every type known: fail here, not in the middle of an audit
    section.settings_fields()
    if before is not None:
        index = SECTIONS.index(find_section(before))
    elif section.needs_against:
        index = len(SECTIONS)
    else:
        index = next((i for i, s in enumerate(SECTIONS) if s.needs_against), len(SECTIONS))
    SECTIONS.insert(index, section)
    _changed()
    return section


def unregister_section(name: str) -> Any:
    """Take the section called ``name`` out of the audit; return it."""
    section = find_section(name)
    SECTIONS.remove(section)
    _changed()
    return section


class AuditSizes:
    """How much work each section does: ``sizes["aqi"]`` (or ``sizes.aqi``) is the AQI section's sizes.

    ``AuditSizes()`` is the default audit (:data:`FULL`), ``AuditSizes(quick=True)`` the ``--quick``
    one (:data:`QUICK`). Keyword arguments replace sections' sizes: a sizes instance, or a dict of
    the fields to change, e.g. ``AuditSizes(aqi={"n_bootstrap": 20})``. A section registered
    later gets its own defaults.
    """

    def __init__(self, quick: bool = False, **sections: Any) -> None:
        self.quick = bool(quick)
        self._given: dict[str, Any] = {}
        for name, value in sections.items():
            self._given[name] = self._resolve(name, value)

    def _defaults(self, name: str) -> Any:
        sizes_cls = getattr(find_section(name), "Sizes", None)
        if sizes_cls is None:
            raise GeomprobeError(f"audit section {name!r} has no sizes")
        return quick_sizes(sizes_cls) if self.quick else sizes_cls()

    def _resolve(self, name: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            base = self._given.get(name) or self._defaults(name)
            known = {f.name for f in fields(base)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise GeomprobeError(
                    f"audit section {name!r} has no size {', '.join(unknown)}; its sizes are {', '.join(sorted(known))}"
                )
            return replace(base, **value)
        expected = getattr(find_section(name), "Sizes", None)
        if expected is None or not (is_dataclass(value) and isinstance(value, expected)):
            raise GeomprobeError(
                f"sizes of audit section {name!r} must be a {getattr(expected, '__name__', 'sizes')} or a dict of its fields"
            )
        return value

    def __getitem__(self, name: str) -> Any:
        return self._given[name] if name in self._given else self._defaults(name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except GeomprobeError as exc:
            raise AttributeError(str(exc)) from None

    def replace(self, **sections: Any) -> AuditSizes:
        """A copy with some sections' sizes replaced (instances or dicts of changed fields, as in the constructor)."""
        out = AuditSizes(self.quick)
        out._given = dict(self._given)
        for name, value in sections.items():
            out._given[name] = out._resolve(name, value)
        return out

    def as_dict(self) -> dict[str, Any]:
        """Every registered section's sizes (those with sizes), by name."""
        return {s.name: self[s.name] for s in SECTIONS if getattr(s, "Sizes", None) is not None}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AuditSizes) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().items()))

    def __repr__(self) -> str:
        return f"AuditSizes(quick={self.quick}, " + ", ".join(f"{k}={v!r}" for k, v in self._given.items()) + ")"


FULL = AuditSizes()
QUICK = AuditSizes(quick=True)
