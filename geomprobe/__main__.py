import os
import sys

from geomprobe.core.errors import raised_by_interrupt, redeliver_swallowed_interrupts

redeliver_swallowed_interrupts()  # before the heavy imports, where a finalizer can catch Ctrl-C


def _exit_interrupted(message: str | None) -> None:
    # Exit at once: finalising an interpreter stopped mid-import (torch, numpy) can re-raise the
    # interrupt and end the process by SIGINT instead of with exit code 130.
    if message:
        print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


try:
    from geomprobe.cli import main

    code = main()
except (KeyboardInterrupt, ImportError) as exc:  # Ctrl-C while the imports run: no traceback
    if not raised_by_interrupt(exc):
        raise
    _exit_interrupted("geomprobe: interrupted")
if code == 130:
    _exit_interrupted(None)  # main() has said so already
sys.exit(code)
