"""One name, one method: the direction-method names shared by the probes and steering stages.

A name means the same computation wherever it is accepted:

``mean-diff``            mean(positive) - mean(negative) (per pair when pair ids are given in steering)
``pca-diff-uncentered``  top principal direction of the paired differences, *not* centred first: the top
                         eigenvector of their second moment (the RepE / LAT recipe; PCA after random
                         sign flips estimates it)
``pca-diff-centered``    top principal component of the paired differences after subtracting their mean
                         (the control-vector recipe; steering only)

Older spellings are deprecated. ``pca-diff`` meant the uncentred method in the probes and the centred
one in steering, and ``pca-center`` was steering's name for the uncentred one; each old spelling keeps
the meaning it had in its stage (so results do not change), warns with the new name, and saved probe
and vector folders that record an old spelling load under the new one.
"""

from __future__ import annotations

import warnings

UNCENTERED = "pca-diff-uncentered"
CENTERED = "pca-diff-centered"

# stage -> {old spelling: current name}
RENAMED: dict[str, dict[str, str]] = {
    "probes": {"pca-diff": UNCENTERED, "pca_diff": UNCENTERED, "pca-center": UNCENTERED},
    "steering": {"pca-diff": CENTERED, "pca-center": UNCENTERED},
}


def current_name(name: str, stage: str, *, warn: bool = True, stacklevel: int = 3) -> str:
    """``name`` as the current spelling in ``stage`` ("probes" or "steering").

    An old spelling returns its new name, with a FutureWarning when ``warn`` (callers resolve a name
    once per call, so one call warns once); loading a saved folder passes ``warn=False``.
    """
    new = RENAMED[stage].get(name)
    if new is None:
        return name
    if warn:
        warnings.warn(
            f"{stage} method {name!r} is now called {new!r} (the same computation as before); one name now means one "
            f"method in probes and steering: {UNCENTERED!r} (uncentred PCA of pair differences) and {CENTERED!r} "
            f"(centred). Pass {new!r}.",
            FutureWarning,
            stacklevel=stacklevel,
        )
    return new
