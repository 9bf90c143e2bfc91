"""Orthonormal bases, mode subspace overlap (MSO), principal angles and random baselines.

Conventions used throughout :mod:`geomprobe.subspace`:

* A basis is a ``(d, k)`` matrix with orthonormal columns, stored as float64.
* ``MSO(Qa, Qb) = ||Qa^T Qb||_F^2 / min(ka, kb)``. It equals the mean squared cosine of the
  ``min(ka, kb)`` principal angles, so it is 1 when the smaller subspace lies inside the larger
  one and 0 when they are orthogonal.
* For two independent uniformly random subspaces of sizes ``ka`` and ``kb`` in ``R^d``,
  ``E ||Qa^T Qb||_F^2 = ka * kb / d`` exactly, so the expected MSO is ``max(ka, kb) / d``.
* Bases chosen by energy keep the fewest top singular directions whose squared singular values
  reach the asked fraction of the total (never more than the numerical rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError

# Inputs are float32 (caches, checkpoints): directions below this relative size are round-off.
_EPS32 = float(np.finfo(np.float32).eps)
SVD_METHODS = ("auto", "exact", "randomized", "gram")


# -- validation ---------------------------------------------------------------------------------
def check_energy(energy: Any) -> float:
    """Return ``energy`` as a float in (0, 1] or raise :class:`GeomprobeError`."""
    try:
        value = float(energy)
    except (TypeError, ValueError):
        raise GeomprobeError(f"energy fraction {energy!r} is not a number; pass a value in (0, 1] such as 0.9") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise GeomprobeError(f"energy fraction must be in (0, 1], got {energy!r}; pass e.g. --energy 0.9")
    return value


def check_k(k: Any) -> int:
    """Return ``k`` as a positive int or raise :class:`GeomprobeError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
        raise GeomprobeError(f"subspace size k must be a positive integer, got {k!r}; pass e.g. --k 16")
    return int(k)


def _check_method(method: str) -> str:
    if method not in SVD_METHODS:
        raise GeomprobeError(f"unknown SVD method {method!r}; use one of {', '.join(SVD_METHODS)}")
    return method


def _as_basis_matrix(Q: Any, name: str) -> np.ndarray:
    if isinstance(Q, Basis):
        return Q.Q
    if isinstance(Q, torch.Tensor):
        Q = Q.detach().cpu().double().numpy()
    Q = np.asarray(Q, dtype=np.float64)
    if Q.ndim != 2 or Q.shape[1] < 1:
        raise GeomprobeError(f"basis {name} must be a (d, k) matrix with k >= 1; got shape {Q.shape}")
    if not np.all(np.isfinite(Q)):
        raise GeomprobeError(f"basis {name} has NaN or inf entries; rebuild it from finite data")
    return Q


# -- low-level SVD ------------------------------------------------------------------------------
@dataclass
class _TopLeft:
    Q: torch.Tensor  # (m, k) orthonormal columns
    s: torch.Tensor  # (k,) kept singular values, descending
    energy: float  # captured fraction of ||M||_F^2
    rank: int  # numerical rank seen (within the computed spectrum)
    method: str
    total: float  # ||M||_F^2


def _numerical_rank(s: torch.Tensor, shape: tuple[int, int]) -> int:
    if s.numel() == 0 or float(s[0]) <= 0.0:
        return 0
    tol = float(s[0]) * max(shape) * _EPS32
    return int((s > tol).sum())


def _choose_k(s: torch.Tensor, total: float, rank: int, energy: float | None, k: int | None) -> int | None:
    """k for a fixed request, or the fewest directions reaching ``energy``; None if not reached."""
    if k is not None:
        return max(1, min(k, rank))
    if energy is None:
        raise GeomprobeError("give k or an energy fraction")  # callers validate one of them first
    cum = torch.cumsum(s.double() ** 2, 0)
    need = energy * total * (1.0 - 1e-12)
    hit = torch.nonzero(cum >= need)
    if hit.numel() == 0:
        return None
    return max(1, min(int(hit[0]) + 1, rank))


def top_left_singular(
    M: torch.Tensor,
    *,
    k: int | None = None,
    energy: float | None = None,
    method: str = "auto",
    oversample: int = 10,
    niter: int = 4,
    seed: int = 0,
) -> _TopLeft:
    """Top left singular vectors of ``M`` (m, n), ``k`` of them or enough to hold ``energy``.

    ``method``: ``exact`` (LAPACK SVD), ``gram`` (float64 eigendecomposition of the smaller of
    M M^T and M^T M; several times faster than the SVD and accurate far below float32 round-off),
    ``randomized`` (:func:`torch.svd_lowrank` with ``oversample`` extra columns and ``niter``
    power iterations; in energy mode the sketch grows until it holds the energy, measured
    against the exact ``||M||_F^2``), or ``auto`` (gram when min(m, n) <= 4096, else randomized).
    """
    _check_method(method)
    M = M.double()
    m, n = M.shape
    small = min(m, n)
    total = float((M * M).sum())
    if total == 0.0:
        raise GeomprobeError("matrix is all zeros; it has no singular directions")
    if method == "auto":
        method = "gram" if small <= 4096 else "randomized"

    if method == "randomized":
        q = min(small, max(2 * (k or 16), 32))
        while True:
            if q + oversample >= small // 2:
                method = "gram"  # the sketch would not be cheaper than a full decomposition
                break
            with torch.random.fork_rng(devices=[M.device] if M.device.type == "cuda" else []):
                torch.manual_seed(seed)
                U, s, _ = torch.svd_lowrank(M, q=q + oversample, niter=niter)
            rank = _numerical_rank(s, (m, n))
            chosen = _choose_k(s, total, rank, energy, k)
            if chosen is not None and (k is not None or chosen < q + oversample):
                U, s = U[:, :chosen], s[:chosen]
                return _TopLeft(U, s, float((s**2).sum()) / total, rank, f"randomized(q={q + oversample},niter={niter})", total)
            q *= 2

    if method == "gram":
        if m <= n:
            evals, evecs = torch.linalg.eigh(M @ M.T)
            order = torch.argsort(evals, descending=True)
            s = evals[order].clamp_min(0).sqrt()
            U = evecs[:, order]
        else:
            evals, evecs = torch.linalg.eigh(M.T @ M)
            order = torch.argsort(evals, descending=True)
            s = evals[order].clamp_min(0).sqrt()
            V = evecs[:, order]
            rank = _numerical_rank(s, (m, n))
            chosen = _choose_k(s, total, rank, energy, k) or rank
            # Left vectors from M V / s; re-orthonormalise to wash out round-off.
            U, _ = torch.linalg.qr(M @ V[:, :chosen] / s[:chosen])
            s = s[:chosen]
            return _TopLeft(U, s, float((s**2).sum()) / total, rank, "gram", total)
    else:
        U, s, _ = torch.linalg.svd(M, full_matrices=False)
        method = "exact"
    rank = _numerical_rank(s, (m, n))
    chosen = _choose_k(s, total, rank, energy, k) or rank
    U, s = U[:, :chosen], s[:chosen]
    return _TopLeft(U, s, float((s**2).sum()) / total, rank, method, total)


# -- bases of data ------------------------------------------------------------------------------
@dataclass
class Basis:
    """An orthonormal basis of the top singular directions of some data.

    ``Q`` is (d, k) float64; ``singular_values`` are the k kept values (descending);
    ``energy`` is the fraction of the total sum of squares (after centring, if done) they hold.
    """

    Q: np.ndarray
    singular_values: np.ndarray
    energy: float
    n_samples: int
    centered: bool
    rank: int
    method: str
    energy_target: float | None = None
    k_requested: int | None = None
    mean: np.ndarray | None = field(default=None, repr=False)

    @property
    def k(self) -> int:
        return int(self.Q.shape[1])

    @property
    def d(self) -> int:
        return int(self.Q.shape[0])


def subspace_basis(
    X: Any,
    energy: float | None = 0.9,
    k: int | None = None,
    center: bool = True,
    *,
    method: str = "auto",
    device: str | torch.device | None = "cpu",
    name: str = "data",
) -> Basis:
    """Basis of the row space of ``X`` (n samples, d features) from its SVD.

    ``k`` (fixed size) wins over ``energy`` (fraction of the sum of squares to keep, in (0, 1]).
    With ``center=True`` (the default) the column mean is removed first, so a large shared mean
    does not become the top direction; ``center=False`` reproduces the uncentred reference.
    The basis never exceeds the numerical rank of the data.
    """
    from geomprobe.core.device import resolve_device

    if k is not None:
        k = check_k(k)
        energy = None
    else:
        energy = check_energy(energy)
    data = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    if data.ndim != 2:
        raise GeomprobeError(f"{name} must be a 2-D (samples, features) array; got shape {tuple(data.shape)}")
    n, d = data.shape
    min_n = 2 if center else 1
    if n < min_n:
        raise GeomprobeError(f"{name} has {n} sample(s); centring needs at least 2 (or pass center=False / --no-center)")
    if k is not None and k > n - (1 if center else 0):
        room = n - 1 if center else n
        raise GeomprobeError(
            f"{name} has {n} samples, which span at most {room} {'centred ' if center else ''}directions, "
            f"fewer than k={k}; lower --k or add samples"
        )
    if k is not None and k > d:
        raise GeomprobeError(f"k={k} is larger than the dimension d={d}; lower --k")
    dev = resolve_device(device)
    data = data.to(dev, torch.float64)
    if not bool(torch.isfinite(data).all()):
        raise GeomprobeError(f"{name} has NaN or inf values; recompute the activations")
    mean = data.mean(0) if center else None
    centred = data - mean if mean is not None else data
    if float((centred * centred).sum()) == 0.0:
        raise GeomprobeError(
            f"{name} has no variance (all rows identical{' after centring' if center else ''}); check the inputs"
        )
    top = top_left_singular(centred.T, k=k, energy=energy, method=method)
    return Basis(
        Q=top.Q.cpu().numpy(),
        singular_values=top.s.cpu().numpy(),
        energy=top.energy,
        n_samples=int(n),
        centered=bool(center),
        rank=top.rank,
        method=top.method,
        energy_target=energy,
        k_requested=k,
        mean=mean.cpu().numpy() if mean is not None else None,
    )


# -- comparisons --------------------------------------------------------------------------------
def _pair(Qa: Any, Qb: Any) -> tuple[np.ndarray, np.ndarray]:
    A = _as_basis_matrix(Qa, "Qa")
    B = _as_basis_matrix(Qb, "Qb")
    if A.shape[0] != B.shape[0]:
        raise GeomprobeError(
            f"bases live in different dimensions ({A.shape[0]} vs {B.shape[0]}); compare bases of the same space"
        )
    return A, B


def mode_subspace_overlap(Qa: Any, Qb: Any) -> float:
    """``||Qa^T Qb||_F^2 / min(ka, kb)`` for orthonormal bases (arrays, tensors or :class:`Basis`)."""
    A, B = _pair(Qa, Qb)
    cross = A.T @ B
    return float(np.sum(cross * cross) / min(A.shape[1], B.shape[1]))


def principal_cosines(Qa: Any, Qb: Any) -> np.ndarray:
    """Cosines of the ``min(ka, kb)`` principal angles between the subspaces, largest first."""
    A, B = _pair(Qa, Qb)
    values = np.linalg.svd(A.T @ B, compute_uv=False)
    return np.clip(values[: min(A.shape[1], B.shape[1])], 0.0, 1.0)


def random_baseline(d: int, ka: int, kb: int) -> float:
    """Expected MSO of two independent uniformly random subspaces: ``max(ka, kb) / d``."""
    if d < 1 or ka < 1 or kb < 1 or ka > d or kb > d:
        raise GeomprobeError(f"random baseline needs 1 <= ka, kb <= d; got d={d}, ka={ka}, kb={kb}")
    return max(ka, kb) / d


def energy_in_subspace(Q: Any, M: Any) -> float:
    """Fraction of ``||M||_F^2`` inside span(Q): ``||Q^T M||_F^2 / ||M||_F^2`` (M: (d,) or (d, n))."""
    A = _as_basis_matrix(Q, "Q")
    M = np.asarray(M.detach().cpu().double().numpy() if isinstance(M, torch.Tensor) else M, dtype=np.float64)
    if M.ndim == 1:
        M = M[:, None]
    if M.shape[0] != A.shape[0]:
        raise GeomprobeError(f"matrix has {M.shape[0]} rows but the basis lives in dimension {A.shape[0]}")
    total = float(np.sum(M * M))
    if total == 0.0:
        return float("nan")
    inside = A.T @ M
    return float(np.sum(inside * inside) / total)


@dataclass
class RandomBaseline:
    """MSO of ``n_draws`` pairs of independent random subspaces of sizes ka, kb in R^d."""

    d: int
    ka: int
    kb: int
    n_draws: int
    seed: int
    draws: np.ndarray = field(repr=False)

    @property
    def mean(self) -> float:
        return float(self.draws.mean())

    @property
    def std(self) -> float:
        return float(self.draws.std(ddof=1)) if self.n_draws > 1 else 0.0

    @property
    def p95(self) -> float:
        return float(np.quantile(self.draws, 0.95))


_BASELINE_CACHE: dict[tuple[int, int, int, int, int], np.ndarray] = {}


def empirical_random_baseline(
    d: int, ka: int, kb: int, n_draws: int = 100, seed: int = 0, device: str | torch.device | None = "cpu"
) -> RandomBaseline:
    """Monte-Carlo MSO of random subspace pairs (seeded; same seed, same draws on any device).

    By rotation invariance one subspace can be fixed to the first ``max(ka, kb)`` coordinate
    axes; the other is the Q factor of a Gaussian (d, min(ka, kb)) matrix.
    """
    from geomprobe.core.device import resolve_device

    random_baseline(d, ka, kb)  # validates sizes
    if int(n_draws) < 1:
        raise GeomprobeError(f"n_draws must be >= 1, got {n_draws}")
    key = (int(d), int(ka), int(kb), int(n_draws), int(seed))
    if key not in _BASELINE_CACHE:
        small, big = min(ka, kb), max(ka, kb)
        gen = torch.Generator().manual_seed(int(seed))
        dev = resolve_device(device)
        draws = []
        batch = max(1, min(int(n_draws), (1 << 24) // max(1, d * small)))
        for start in range(0, int(n_draws), batch):
            b = min(batch, int(n_draws) - start)
            G = torch.randn(b, d, small, generator=gen, dtype=torch.float64).to(dev)
            Q, _ = torch.linalg.qr(G)
            head = Q[:, :big, :]
            draws.append(((head * head).sum((1, 2)) / small).cpu())
        _BASELINE_CACHE[key] = torch.cat(draws).numpy()
    return RandomBaseline(int(d), int(ka), int(kb), int(n_draws), int(seed), _BASELINE_CACHE[key].copy())
