"""All-layer logistic probe sweep vs a scikit-learn per-layer loop on the same data.

    python benchmarks/probe_sweep.py                  # synthetic: d=576, 30 layers, 3000 rows
    python benchmarks/probe_sweep.py --cache honesty.h5 --pooling mean

Both sides do the reference recipe (StandardScaler, then L2 logistic regression with C=0.1 and
no intercept) on the same training rows, and are scored on the same held-out rows. Prints both
wall times, the speed ratio, the largest per-layer held-out AUROC difference and the smallest
coefficient correlation. Target: ratio >= 5 at equal AUROC.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def synthetic(L: int, N: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired, anisotropic activations with a few massive dimensions; signal peaks mid-stack."""
    rng = np.random.default_rng(seed)
    n_pairs = N // 2
    y = np.tile([0, 1], n_pairs)
    pairs = np.repeat(np.arange(n_pairs), 2)
    X = np.empty((L, 2 * n_pairs, d), np.float32)
    spectrum = 1.0 / np.sqrt(1.0 + np.arange(d))  # decaying variance, like residual streams
    for layer in range(L):
        basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
        u = rng.normal(size=d)
        u /= np.linalg.norm(u)
        fact = rng.normal(size=(n_pairs, d)) * spectrum * 4
        noise = rng.normal(size=(2 * n_pairs, d)) * spectrum
        strength = 0.3 + 1.2 * np.exp(-(((layer - L / 2) / (L / 4)) ** 2))
        x = (np.repeat(fact, 2, axis=0) + noise) @ basis.T + strength * np.outer(y, u)
        x[:, :3] = x[:, :3] * 20 + 50  # massive activations
        X[layer] = x
    return X, y, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--pooling", default="last")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from geomprobe.probes import auroc, fit_layers, pair_train_test_split

    if args.cache:
        from geomprobe.activations.store import open_cache
        from geomprobe.probes.pipeline import _binary, read_layers

        with open_cache(args.cache) as cache:
            rows, y, _, _ = _binary(cache, None)
            X = read_layers(cache, cache.hooks, args.pooling)[:, rows]
            pairs = cache.pair_ids[rows]
        source = args.cache
    else:
        X, y, pairs = synthetic(args.layers, args.rows, args.d_model)
        source = "synthetic"
    train, test = pair_train_test_split(y, pairs, test_size=0.2, seed=0)
    Xtr, Xte = np.ascontiguousarray(X[:, train]), np.ascontiguousarray(X[:, test])
    L, n, d = Xtr.shape
    print(
        f"data: {source}, {L} layers, {n} training rows, {len(test)} held-out rows, d_model {d}; "
        f"torch threads {torch.get_num_threads()}"
    )

    fit_layers(Xtr[:1, :200], y[train][:200], device=args.device)  # warm-up (allocator, kernels)
    start = time.perf_counter()
    fit = fit_layers(Xtr, y[train], "logistic", C=0.1, device=args.device)
    ours = time.perf_counter() - start
    ours_auc = auroc(fit.decision_function(Xte), y[test])

    start = time.perf_counter()
    ref_auc, corr = np.empty(L), np.empty(L)
    for layer in range(L):
        scaler = StandardScaler().fit(Xtr[layer])
        model = LogisticRegression(C=0.1, fit_intercept=False).fit(scaler.transform(Xtr[layer]), y[train])
        ref_auc[layer] = auroc(model.decision_function(scaler.transform(Xte[layer])), y[test])
        corr[layer] = np.corrcoef(model.coef_[0], fit.coef[layer])[0, 1]
    theirs = time.perf_counter() - start

    diff = np.abs(ours_auc - ref_auc)
    print(
        f"geomprobe all-layer sweep: {ours:7.2f} s  (iterations per layer {int(fit.n_iter.min())}..{int(fit.n_iter.max())}, "
        f"all converged: {bool(fit.converged.all())})"
    )
    print(f"scikit-learn layer loop:   {theirs:7.2f} s")
    print(
        f"speed-up: {theirs / ours:.1f}x   max |AUROC diff| over layers: {diff.max():.4f}   "
        f"min coef correlation: {corr.min():.4f}   best layer AUROC {ours_auc.max():.3f} (sklearn {ref_auc.max():.3f})"
    )


if __name__ == "__main__":
    main()
