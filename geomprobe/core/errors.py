"""The one exception type for bad user input.

Every message is a single line that names the problem and, where there is one, the fix.
The CLI turns it into ``geomprobe: error: <message>`` and exit code 2, with no traceback.
"""

from __future__ import annotations


class GeomprobeError(ValueError):
    """Bad input from the user (a file, an argument, a mismatch between artefacts)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def raised_by_interrupt(exc: BaseException) -> bool:
    """True when ``exc`` comes from Ctrl-C: a C extension interrupted while it initialises
    (numpy, torch) re-raises the KeyboardInterrupt as ``ImportError: initialization failed``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
