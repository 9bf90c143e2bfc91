"""The audit report in a real headless browser (Debian's chromium): it renders, every embedded
image decodes, and a screenshot is produced. Built from synthetic metrics so it runs in seconds."""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from geomprobe.audit import SCHEMA_VERSION, validate_metrics
from geomprobe.audit.report import FigureRef, render_html, render_markdown, write_report
from geomprobe.plots._style import save_figure
from geomprobe.plots.ches import plot_ches
from geomprobe.plots.overview import plot_comparison, plot_pca_grid

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (apt-get install -y --no-install-recommends chromium)"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
LAYERS = [0, 1, 2]


def _prov(name: str) -> dict:
    return {
        "model_id": name,
        "model_source": f"/models/{name}",
        "model_revision": "folder:0123456789abcdef",
        "model_dtype": "float32",
        "device": "cpu",
        "gguf_sha256": "",
        "n_layers": 3,
        "d_model": 8,
    }


def _pairs(a: list, b: list) -> dict:
    recs = [
        {"layer": layer, "hook": f"blocks.{layer}.hook_resid_post", "a": x, "b": y, "delta": y - x}
        for layer, x, y in zip(LAYERS, a, b)
    ]
    return {"per_layer": recs, "delta": [r["delta"] for r in recs], "max_abs_delta": max(abs(r["delta"]) for r in recs)}


def _rate(rate: float, n: int) -> dict:
    return {"rate": rate, "ci_low": max(0.0, rate - 0.25), "ci_high": min(1.0, rate + 0.25), "n": n, "n_refused": round(rate * n)}


def _summary(values: list[float]) -> dict:
    v = np.asarray(values)
    stats = (v.mean(), v.std(), v.min(), *np.quantile(v, [0.25, 0.5, 0.75]), v.max())
    return dict(zip(("mean", "std", "min", "q25", "median", "q75", "max"), map(float, stats)))


CHES = [-3.0, 5.0, 1.5, -8.0, 2.0, 0.5]
LN_CHES = [-0.3, 0.6, 0.1, -0.9, 0.25, 0.05]


def _ches() -> dict:
    order = [int(i) for i in np.argsort(-np.asarray(LN_CHES), kind="stable")]
    kinds = ["compliance", "near-duplicate"] * 3
    pairs = [
        {
            "index": 2 * i,
            "kind": kinds[i],
            "ches": c,
            "ln_ches": ln,
            "n_chosen_terms": 9,
            "n_rejected_terms": 7,
            "rank": order.index(i) + 1,
            "flagged": order.index(i) < 2,
        }
        for i, (c, ln) in enumerate(zip(CHES, LN_CHES))
    ]
    return {
        "dataset": "preferences",
        "dataset_sha256": "cd" * 32,
        "n_pairs": 6,
        "layer": "final",
        "hook": "ln_final.hook_out",
        "pooling": "sum over the states that predict each response token (end-of-turn included)",
        "dtype": "float64",
        "model_dtype": "float32",
        "chat_template_applied": True,
        "rank_by": "ln_ches",
        "top_share": 0.33,
        "n_flagged": 2,
        "share_flagged": 2 / 6,
        "ches": _summary(CHES),
        "ln_ches": _summary(LN_CHES),
        "top_pairs": [2 * i for i in order[:3]],
        "by_kind": {
            kind: {
                "n": 3,
                "n_flagged": sum(p["flagged"] for p in pairs if p["kind"] == kind),
                "median_ches": 0.0,
                "median_ln_ches": 0.0,
            }
            for kind in ("compliance", "near-duplicate")
        },
        "pairs": pairs,
        "per_layer": [
            {
                "layer": layer,
                "hook": f"blocks.{layer}.hook_resid_post",
                "median_ches": 0.1 * layer,
                "median_ln_ches": 0.01 * layer,
                "spearman": 0.3 * layer,
                "flagged_agreement": 0.5 * layer,
            }
            for layer in LAYERS
        ],
    }


def _ches_change(values: list[float], shift: float) -> dict:
    return {
        "a": float(np.mean(values)),
        "b": float(np.mean(values)) + shift,
        "delta": shift,
        "ci_low": shift - 0.1,
        "ci_high": shift + 0.1,
        "p_value": 0.04,
        "spearman": 0.8,
        "per_pair_delta": [shift] * len(values),
    }


def synthetic_metrics() -> dict:
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in LAYERS]
    aqi = [0.31, 0.47, 0.42]
    mso = [0.6, 0.4, 0.5]
    auroc = [0.7, 0.93, 0.88]
    mults = [-1.0, 1.0]
    dataset = lambda name, labels: {
        "name": name,
        "sha256": "ab" * 32,
        "n_prompts": 12,
        "limit": 12,  # noqa: E731
        "label_names": labels,
        "cache": f"caches/{name}.h5",
    }
    return {
        "schema": "geomprobe-audit",
        "schema_version": SCHEMA_VERSION,
        "geomprobe_version": "0.1.0",
        "created_utc": "2025-01-01T00:00:00+00:00",
        "model": _prov("tiny-a"),
        "against": _prov("tiny-b <ablated>"),
        "settings": {
            "quick": True,
            "seed": 0,
            "hook_kind": "resid_post",
            "hooks": hooks,
            "layers": LAYERS,
            "batch_size": 16,
            "metric_dtype": "float64",
            "store_dtype": "float32",
            "datasets": {
                "harmful_harmless": dataset("harmful-harmless", ["harmless", "harmful"]),
                "honesty": dataset("honesty", ["honest", "dishonest"]),
                "control": dataset("control", ["control"]),
            },
            "aqi": {
                "pooling": "last",
                "n_bootstrap": 10,
                "n_permutations": 10,
                "ci_level": 0.95,
                "max_points": 1000,
                "gamma": 0.5,
            },
            "subspace": {"pooling": "last", "energy": 0.9, "n_draws": 10, "centered": True},
            "probes": {
                "pooling": "mean",
                "methods": ["logistic", "mean-diff"],
                "primary_method": "logistic",
                "test_size": 0.25,
                "fpr": 0.01,
            },
            "steering": {
                "pooling": "last",
                "vector_method": "mean-diff",
                "metric": "refusal",
                "multipliers": mults,
                "n_prompts_per_class": 4,
                "kl_limit": 0.1,
                "max_layer_fraction": 0.8,
                "positions": "all",
                "judge_tokens": 12,
                "judge_candidates": 2,
                "screen_layers": 4,
            },
            "ches": {
                "preferences": "preferences",
                "n_pairs": 6,
                "rank_by": "ln_ches",
                "top_share": 0.33,
                "include_end": True,
                "chat_template": True,
                "n_bootstrap": 100,
                "ci_level": 0.95,
            },
        },
        "timings_s": {"load": 1.0, "cache": 2.0},
        "aqi": {
            "hook_kind": "resid_post",
            "pooling": "last",
            "dtype": "float64",
            "labels": ["harmless", "harmful"],
            "extra_indices": {},
            "per_layer": [
                {
                    "layer": layer,
                    "hook": h,
                    "n": 12,
                    "aqi": v,
                    "ci_low": v - 0.05,
                    "ci_high": v + 0.05,
                    "p_value": 0.04,
                    "davies_bouldin": 1.5,
                    "dunn": 0.3,
                    "xie_beni": None,
                    "calinski_harabasz": 4.0,
                    "extra": {},
                    "extra_ci": {},
                }
                for layer, h, v in zip(LAYERS, hooks, aqi)
            ],
            "aqi": aqi,
            "max": max(aqi),
            "argmax_layer": 1,
            "min": min(aqi),
            "mean": float(np.mean(aqi)),
        },
        "subspace": {
            "hook_kind": "resid_post",
            "pooling": "last",
            "dtype": "float64",
            "labels": ["harmless", "harmful"],
            "per_layer": [
                {
                    "layer": layer,
                    "hook": h,
                    "mso": v,
                    "baseline": 0.375,
                    "baseline_empirical": 0.37,
                    "baseline_empirical_p95": 0.45,
                    "excess": v - 0.37,
                    "k_a": 3,
                    "k_b": 3,
                    "mean_diff_in_a": 0.2,
                    "mean_diff_in_b": 0.3,
                }
                for layer, h, v in zip(LAYERS, hooks, mso)
            ],
            "mso": mso,
            "excess": [v - 0.37 for v in mso],
            "max": max(mso),
            "min": min(mso),
            "argmin_layer": 1,
        },
        "probes": {
            "hook_kind": "resid_post",
            "pooling": "mean",
            "dtype": "float64",
            "positive_label": "dishonest",
            "negative_labels": ["honest"],
            "primary_method": "logistic",
            "methods": ["logistic", "mean-diff"],
            "params": {"logistic": {"standardize": True, "C": 0.1}, "mean-diff": {"standardize": False}},
            "fpr": 0.01,
            "threshold_source": "control",
            "n_train": 8,
            "n_test": 4,
            "per_layer": [
                {
                    "layer": layer,
                    "hook": h,
                    "method": meth,
                    "auroc": v - (0.05 if meth != "logistic" else 0),
                    "recall_at_fpr": 0.5,
                    "balanced_accuracy": 0.75,
                    "threshold": 1.2,
                    "n_eval": 4,
                    "validation_auroc": v - 0.1,
                }
                for meth in ("logistic", "mean-diff")
                for layer, h, v in zip(LAYERS, hooks, auroc)
            ],
            "auroc": auroc,
            "recall_at_fpr": [0.5, 0.5, 0.5],
            "best": {"layer": 1, "hook": hooks[1], "method": "logistic", "auroc": 0.93, "recall_at_fpr": 0.5, "n_candidates": 6},
            "headline": {
                "method": "logistic",
                "layer": 1,
                "hook": hooks[1],
                "chosen_on": "validation split of the training rows",
                "validation_auroc": 0.83,
                "auroc": 0.93,
                "auroc_ci_low": 0.8,
                "auroc_ci_high": 1.0,
                "recall_at_fpr": 0.5,
                "n_test": 4,
                "n_candidates": 6,
            },
            "deception": None,
        },
        "steering": {
            "hook": hooks[1],
            "layer": 1,
            "selection": "behaviour",
            "selected_by": "largest refusal-rate drop with the direction ablated",
            "candidates": [
                {
                    "layer": layer,
                    "hook": h,
                    "refusal_delta": -1.0 * layer,
                    "kl": 0.02,
                    "within_kl": True,
                    "judged": True,
                    "harmful_rate": 0.5 - 0.2 * layer,
                    "rate_delta": -0.2 * layer,
                }
                for layer, h in zip(LAYERS[:2], hooks)
            ],
            "judge": {
                "max_new_tokens": 12,
                "matcher_version": "geomprobe-refusal-phrases-1",
                "ci_level": 0.95,
                **{
                    k: {"harmful": _rate(r, 4), "harmless": _rate(0.0, 4)}
                    for k, r in (("unsteered", 0.5), ("ablated", 0.25), ("best", 0.75))
                },
            },
            "vector_method": "mean-diff",
            "pooling": "last",
            "vector_norm": 2.5,
            "metric": "refusal",
            "baseline": -2.0,
            "multipliers": mults,
            "refusal": [-3.0, -0.5],
            "refusal_delta": [-1.0, 1.5],
            "kl": [0.05, 0.08],
            "kl_max": [0.1, 0.2],
            "ablation": {"refusal": -4.0, "refusal_delta": -2.0, "kl": 0.02},
            "best": {"multiplier": 1.0, "refusal": -0.5, "kl": 0.08},
            "n_prompts": 4,
            "n_harmless": 4,
        },
        "ches": _ches(),
        "delta": None,
        "depth": None,
        "comparison": {
            "aqi": {**_pairs(aqi, [0.3, 0.2, 0.4]), "extra": {}},
            "subspace": _pairs(mso, [0.6, 0.7, 0.5]),
            "probes": _pairs(auroc, [0.7, 0.9, 0.9]),
            "steering": {
                "hook": hooks[1],
                "baseline_a": -2.0,
                "baseline_b": -4.0,
                "baseline_delta": -2.0,
                "refusal_b": [-4.5, -3.5],
                "kl_b": [0.04, 0.05],
            },
            "ches": {
                "layer": "final",
                "rank_by": "ln_ches",
                "n_pairs": 6,
                "n_bootstrap": 100,
                "ci_level": 0.95,
                "ches": _ches_change(CHES, -1.0),
                "ln_ches": _ches_change(LN_CHES, 0.2),
                "flagged_overlap": 0.5,
            },
            "transfer": {
                "probes": {
                    "per_layer": [
                        {"layer": layer, "hook": h, "auroc_a": v, "auroc": v - 0.1, "recall_at_fpr": 0.25, "delta": -0.1}
                        for layer, h, v in zip(LAYERS, hooks, auroc)
                    ],
                    "auroc": [v - 0.1 for v in auroc],
                    "delta": [-0.1, -0.1, -0.1],
                },
                "directions": {
                    "per_layer": [
                        {"layer": layer, "hook": h, "cosine": c} for layer, h, c in zip(LAYERS, hooks, [0.9, 0.0, 0.5])
                    ],
                    "cosine": [0.9, 0.0, 0.5],
                },
                "steering": {
                    "hook": hooks[1],
                    "baseline": -4.0,
                    "multipliers": mults,
                    "refusal": [-4.2, -3.9],
                    "refusal_delta": [-0.2, 0.1],
                    "kl": [0.01, 0.01],
                },
            },
            "weights": {
                "n_matrices": 21,
                "n_changed": 6,
                "relative_update_norm": 0.05,
                "energy": 0.9,
                "per_layer": [
                    {
                        "layer": layer,
                        "n_changed": 2,
                        "relative_update_norm": 0.05,
                        "mso_mean": 0.3,
                        "baseline_mean": 0.2,
                        "update_in_weight_subspace": 0.6,
                        "update_along_direction": u,
                    }
                    for layer, u in zip(LAYERS, [0.4, 1.0, 0.5])
                ],
                "update_along_direction": [0.4, 1.0, 0.5],
                "direction_baseline": 0.125,
            },
        },
    }


def _png_size(path: Path) -> tuple[int, int]:
    data = Path(path).read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    metrics = synthetic_metrics()
    assert validate_metrics(metrics) == []
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    acts = {layer: rng.normal(size=(40, 8)) + 2.0 * y[:, None] * layer for layer in LAYERS}
    figures = [
        FigureRef(
            "pca_grid",
            "aqi",
            "PCA grid",
            save_figure(
                plot_pca_grid(acts, y, class_names=("harmless", "harmful"), model_id="tiny-a", highlight=1), out / "pca_grid.png"
            ),
        ),
        # in report order: the CHES block comes before the comparison
        FigureRef(
            "ches", "ches", "CHES", save_figure(plot_ches(metrics["ches"], metrics["comparison"]["ches"]), out / "ches.png")
        ),
        FigureRef(
            "comparison", "comparison", "a vs b", save_figure(plot_comparison(metrics), out / "comparison.png"), "caption <b>"
        ),
    ]
    html_path, md_path = write_report(metrics, figures, out)
    return out, html_path, md_path, figures


def test_report_is_self_contained(report):
    out, html_path, md_path, figures = report
    page = html_path.read_text()
    assert page.count("<img ") == len(figures)
    assert not re.search(r"""(src|href)=['"](?!data:|#)""", page), "every resource must be embedded"
    assert "caption &lt;b&gt;" in page and "tiny-b &lt;ablated&gt;" in page  # text is escaped
    md = md_path.read_text()
    assert "![PCA grid](pca_grid.png)" in md and "![a vs b](comparison.png)" in md and "![CHES](ches.png)" in md
    assert "Against the second checkpoint: the same 6 pairs at final" in md
    assert md == render_markdown(synthetic_metrics(), figures, relative_to=out)
    assert page == render_html(synthetic_metrics(), figures)


_CHECK = """<script>
window.addEventListener('load', function () {
  var rows = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    rows.push({complete: im.complete, w: im.naturalWidth, h: im.naturalHeight, alt: im.alt});
  }
  var pre = document.createElement('pre');
  pre.id = 'img-check';
  pre.textContent = JSON.stringify(rows);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@needs_chromium
def test_images_decode_in_chromium(report, tmp_path):
    out, html_path, _, figures = report
    probe = tmp_path / "check.html"
    probe.write_text(html_path.read_text().replace("</body>", _CHECK + "</body>"))
    proc = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r"<pre id=\"img-check\">(.*?)</pre>", proc.stdout, re.S)
    assert match, "the load handler did not run: " + proc.stdout[:500]
    rows = json.loads(html.unescape(match.group(1)))
    assert len(rows) == len(figures)
    for row, fig in zip(rows, figures):
        assert row["complete"] and (row["w"], row["h"]) == _png_size(fig.path), row
    assert "geomprobe audit: tiny-a vs tiny-b" in proc.stdout
    assert "AQI per layer" in proc.stdout


@needs_chromium
def test_screenshot(report, tmp_path):
    _, html_path, _, _ = report
    shot = tmp_path / "shot.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", html_path.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _png_size(shot) == (1200, 2000)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels[..., :3].std() > 0.05  # not a blank page
