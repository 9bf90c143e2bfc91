"""A toy probe kind, registered once: ridge regression of the +-1 labels, with its strength ``alpha``.

Importing this module registers it (``geomprobe --plugin tests/toy_probe.py probe train --method ridge
--param alpha=2`` does the same for the CLI); docs/architecture.md shows this file as the worked
example of "Adding a probe kind".
"""

from dataclasses import dataclass

import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.probes import KindFit, ProbeData, register_probe_kind


@dataclass(frozen=True)
class RidgeParams:
    alpha: float = 1.0  # L2 strength (scikit-learn's Ridge alpha)

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise GeomprobeError(f"ridge alpha must be positive; got {self.alpha}")


def fit_ridge(data: ProbeData, params: RidgeParams) -> KindFit:
    """All layers at once: centre X and the targets, solve (Xc'Xc + alpha I) w = Xc't per layer."""
    X = data.X.to(data.dtype)  # (L, N, d)
    t = 2.0 * data.y.to(data.dtype) - 1.0  # (N,) in {-1, +1}
    mean_x, mean_t = X.mean(dim=1), t.mean()
    Xc = X - mean_x[:, None, :]
    gram = Xc.transpose(1, 2) @ Xc + params.alpha * torch.eye(X.shape[2], dtype=X.dtype, device=X.device)
    coef = torch.linalg.solve(gram, Xc.transpose(1, 2) @ (t - mean_t))  # (L, d)
    return KindFit(coef, mean_t - (mean_x * coef).sum(-1), {"n_rows": int(X.shape[1])})


register_probe_kind(
    "ridge", RidgeParams, fit_ridge, aliases=("ridge-regression",), description="ridge regression of the +-1 labels"
)
