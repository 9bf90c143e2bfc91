"""The one exception type for bad user input.

Every message is a single line that names the problem and, where there is one, the fix.
The CLI turns it into ``geomprobe: error: <message>`` and exit code 2, with no traceback.
"""

from __future__ import annotations


class GeomprobeError(ValueError):
    """Bad input from the user (a file, an argument, a mismatch between artefacts)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
