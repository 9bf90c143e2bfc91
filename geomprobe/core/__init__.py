"""The bottom layer every stage builds on: errors, hook names, labels, devices and file I/O.

Nothing in ``geomprobe.core`` imports a stage; see docs/architecture.md for the layers.
"""

__version__ = "0.1.0"
