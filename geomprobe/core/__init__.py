"""The bottom layer every stage builds on: errors, hook names, labels, devices, file I/O and the bootstrap.

Nothing in ``geomprobe.core`` imports a stage; see docs/architecture.md for the layers.
"""

__version__ = "0.1.0"
