"""The one exception type for bad user input.

Every message is a single line that names the problem and, where there is one, the fix.
The CLI turns it into ``geomprobe: error: <message>`` and exit code 2, with no traceback.
"""

from __future__ import annotations

import sys


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


def redeliver_swallowed_interrupts() -> None:
    """Make a Ctrl-C that lands inside a finalizer (``__del__``) still stop the program.

    Python prints such an interrupt as "Exception ignored in ..." and carries on, so a run that
    should stop with exit code 130 would finish and write its outputs. The hook keeps stderr quiet
    and sends SIGINT again a moment later, when the main thread is back in ordinary code."""
    import os
    import signal
    import threading

    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT)).start()
            return
        previous(unraisable)

    if not getattr(previous, "redelivers_interrupts", False):  # install once
        hook.redelivers_interrupts = True  # type: ignore[attr-defined]
        sys.unraisablehook = hook
