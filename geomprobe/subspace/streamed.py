"""Subspace bases of caches larger than memory, from the d x d scatter matrix."""

from __future__ import annotations

import numpy as np
import torch

from geomprobe.activations.blocks import block_rows_for, iter_row_blocks
from geomprobe.activations.store import CacheFile
from geomprobe.core.errors import GeomprobeError


def class_scatter(
    cache: CacheFile, hook: str, pooling: str, rows: np.ndarray, *, center: bool = True, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mean, scatter, n)``: float64 mean and ``sum (x - mean)(x - mean)^T`` (uncentred if not ``center``)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    d = cache.d_model
    block_rows = block_rows or block_rows_for(d)
    total = np.zeros(d)
    for _, X in iter_row_blocks(cache, hook, pooling, rows, block_rows):
        total += X.astype(np.float64).sum(0)
    mean = total / max(1, len(rows))
    shift = torch.from_numpy(mean if center else np.zeros(d))
    S = torch.zeros((d, d), dtype=torch.float64)
    for _, X in iter_row_blocks(cache, hook, pooling, rows, block_rows):
        T = torch.from_numpy(X).to(torch.float64).sub_(shift)
        S.addmm_(T.T, T)
    return mean, S.numpy(), len(rows)


def streamed_class_basis(
    cache: CacheFile,
    hook: str,
    pooling: str,
    rows: np.ndarray,
    energy: float | None = 0.9,
    k: int | None = None,
    center: bool = True,
    *,
    name: str = "data",
    block_rows: int | None = None,
):
    """:func:`geomprobe.subspace.basis.subspace_basis` of ``rows`` from their d x d scatter matrix."""
    from geomprobe.subspace.basis import Basis, _choose_k, _numerical_rank, check_energy, check_k

    if k is not None:
        k = check_k(k)
        energy = None
    else:
        energy = check_energy(energy)
    n = len(rows)
    if n < (2 if center else 1):
        raise GeomprobeError(f"{name} has {n} sample(s); centring needs at least 2 (or pass center=False / --no-center)")
    if k is not None and k > n - (1 if center else 0):
        raise GeomprobeError(f"{name} has {n} samples, fewer directions than k={k}; lower --k or add samples")
    mean, S, _ = class_scatter(cache, hook, pooling, rows, center=center, block_rows=block_rows)
    d = S.shape[0]
    if k is not None and k > d:
        raise GeomprobeError(f"k={k} is larger than the dimension d={d}; lower --k")
    total = float(np.trace(S))
    if total == 0.0:
        raise GeomprobeError(f"{name} has no variance (all rows identical); check the inputs")
    evals, evecs = torch.linalg.eigh(torch.from_numpy(S))
    order = torch.argsort(evals, descending=True)
    s = evals[order].clamp_min(0).sqrt()
    U = evecs[:, order]
    rank = _numerical_rank(s, (d, n))
    chosen = _choose_k(s, total, rank, energy, k) or rank
    U, s = U[:, :chosen], s[:chosen]
    return Basis(
        Q=U.numpy(),
        singular_values=s.numpy(),
        energy=float((s**2).sum()) / total,
        n_samples=int(n),
        centered=bool(center),
        rank=rank,
        method="gram(streamed)",
        energy_target=energy,
        k_requested=k,
        mean=mean if center else None,
    )
