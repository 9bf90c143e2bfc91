"""A writer thread behind a bounded queue, so disk writes overlap the next forward pass."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class BackgroundWriter:
    """Write batches from a thread behind a bounded queue; errors surface on the next call."""

    def __init__(self, write: Callable[..., None], depth: int = 4) -> None:
        self.write = write
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="geomprobe-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.write(**item)
                except BaseException as exc:  # reported to the main thread
                    self.error = exc

    def put(self, **batch) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(batch)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
