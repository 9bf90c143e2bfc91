"""Audit reports: one self-contained HTML page and a Markdown twin, rendered from metrics.json.

The HTML embeds every plot as a base64 ``data:image/png`` URI and carries its own small CSS,
so the single file reads offline in any browser. The Markdown file links the PNGs by relative
path (keep it next to them). Both show the same tables: provenance, one per stage, and the
comparison with a second checkpoint when there is one.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomprobe.core.errors import GeomprobeError

SECTION_ORDER = ("summary", "aqi", "subspace", "probes", "steering", "comparison", "provenance")
SECTION_TITLES = {
    "summary": "Summary",
    "aqi": "AQI: harmful vs harmless separation",
    "subspace": "Activation-subspace overlap",
    "probes": "Honesty probes",
    "steering": "Steering dose-response",
    "comparison": "Comparison with the second checkpoint",
    "provenance": "Provenance and settings",
}


@dataclass
class FigureRef:
    """A plot saved as PNG, placed in one report section."""

    key: str
    section: str
    title: str
    path: Path
    caption: str = ""


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Section:
    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureRef] = field(default_factory=list)


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers to ``digits`` significant places, null as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) < 10 ** -(digits) or abs(value) >= 10**6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.{max(digits - 2, 1)}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    return str(value)


def _model_line(prov: dict[str, Any] | None) -> str:
    if not prov:
        return "–"
    return f"{prov.get('model_id', '')} ({prov.get('model_revision', '')}, {prov.get('model_dtype', '')}, {prov.get('n_layers', '?')} layers, d_model {prov.get('d_model', '?')})"


def _where(stage: dict[str, Any]) -> str:
    return f"hook {stage.get('hook_kind', '')}, pooling {stage.get('pooling', '')}, {stage.get('dtype', 'float64')}"


# -- sections from metrics ------------------------------------------------------------------------
def _summary(m: dict[str, Any], gates: Sequence[Any]) -> Section:
    s = Section("summary", SECTION_TITLES["summary"])
    aqi, sub, probes, steer = m.get("aqi") or {}, m.get("subspace") or {}, m.get("probes") or {}, m.get("steering") or {}
    rows = [["audited model", _model_line(m.get("model"))]]
    if m.get("against"):
        rows.append(["compared with", _model_line(m.get("against"))])
    rows += [
        ["layers audited", fmt(len((m.get("settings") or {}).get("layers", [])))],
        ["max AQI (layer)", f"{fmt(aqi.get('max'))} (layer {fmt(aqi.get('argmax_layer'))})"],
        ["min subspace overlap (layer)", f"{fmt(sub.get('min'))} (layer {fmt(sub.get('argmin_layer'))})"],
    ]
    best = probes.get("best") or {}
    if best:
        rows.append([
            "best probe AUROC",
            f"{fmt(best.get('auroc'))} ({best.get('method', '')}, layer {fmt(best.get('layer'))}; "
            f"recall {fmt(best.get('recall_at_fpr'))} at {fmt(probes.get('fpr'))} control FPR)",
        ])
    if steer:
        rows.append(["steering layer", f"{steer.get('hook', '')} ({steer.get('selected_by', '')})"])
        rows.append(["refusal log-odds, unsteered", fmt(steer.get("baseline"))])
        ab = steer.get("ablation") or {}
        if ab:
            rows.append(["with the direction ablated", f"{fmt(ab.get('refusal'))} (KL {fmt(ab.get('kl'))})"])
        sb = steer.get("best")
        rows.append(["strongest refusal within the KL limit",
                     f"{fmt(sb.get('refusal'))} at multiplier {fmt(sb.get('multiplier'))} (KL {fmt(sb.get('kl'))})"
                     if sb else "none: every multiplier exceeds the KL limit"])
    comp = m.get("comparison")
    if comp:
        rows.append(["max |ΔAQI| against the second checkpoint", fmt((comp.get("aqi") or {}).get("max_abs_delta"))])
        cs = comp.get("steering") or {}
        rows.append(["refusal baseline: a → b", f"{fmt(cs.get('baseline_a'))} → {fmt(cs.get('baseline_b'))}"])
    s.tables.append(Table("Headline numbers", ["metric", "value"], rows))
    if gates:
        s.tables.append(Table("--fail-if gates", ["condition", "result", "value"], [
            [g.condition.text, "FAILED" if g.failed else "passed", g.detail] for g in gates
        ]))
    return s


def _aqi(m: dict[str, Any]) -> Section:
    a = m["aqi"]
    s = Section("aqi", SECTION_TITLES["aqi"])
    labels = " vs ".join(a.get("labels", []))
    s.paragraphs.append(
        f"{labels}; {_where(a)}. AQI = 0.5/(1+DBS) + 0.5·DI/(1+DI) on raw activations (0 = no separation, "
        "1 = perfect); interval: stratified bootstrap (resampled rows repeat, which moves Dunn, so at small n the "
        "interval can sit beside the estimate); p: label permutations. Dunn is set by single extreme pairs."
    )
    rows = [
        [fmt(r.get("layer")), fmt(r.get("aqi")), f"{fmt(r.get('ci_low'))} – {fmt(r.get('ci_high'))}", fmt(r.get("p_value")),
         fmt(r.get("davies_bouldin")), fmt(r.get("dunn")), fmt(r.get("xie_beni")), fmt(r.get("calinski_harabasz")), fmt(r.get("n"))]
        for r in a.get("per_layer", [])
    ]
    s.tables.append(Table("AQI per layer", ["layer", "AQI", "interval", "p", "DBS", "Dunn", "XBI", "CHI", "n"], rows))
    return s


def _subspace(m: dict[str, Any]) -> Section:
    sub = m["subspace"]
    s = Section("subspace", SECTION_TITLES["subspace"])
    s.paragraphs.append(
        f"{' vs '.join(sub.get('labels', []))}; {_where(sub)}; each class centred, basis holding "
        f"{fmt((m.get('settings') or {}).get('subspace', {}).get('energy'))} of its energy. MSO = mean squared cosine "
        "of the principal angles; random baseline max(k)/d."
    )
    rows = [
        [fmt(r.get("layer")), fmt(r.get("mso")), fmt(r.get("baseline")), fmt(r.get("baseline_empirical")), fmt(r.get("excess")),
         fmt(r.get("k_a")), fmt(r.get("k_b")), fmt(r.get("mean_diff_in_a")), fmt(r.get("mean_diff_in_b"))]
        for r in sub.get("per_layer", [])
    ]
    s.tables.append(Table("Overlap per layer", ["layer", "MSO", "baseline", "random pairs", "excess", "k_a", "k_b",
                                                "mean diff in A", "mean diff in B"], rows))
    return s


def _probes(m: dict[str, Any]) -> Section:
    p = m["probes"]
    s = Section("probes", SECTION_TITLES["probes"])
    s.paragraphs.append(
        f"positive: {p.get('positive_label', '')} vs {', '.join(p.get('negative_labels', []))}; {_where(p)}; "
        f"trained on {fmt(p.get('n_train'))} rows, evaluated on {fmt(p.get('n_test'))} held-out rows (pairs never split). "
        f"Recall at {fmt(p.get('fpr'))} FPR uses the threshold from the {p.get('threshold_source', '')} set."
    )
    methods = list(p.get("methods", []))
    by_layer: dict[int, dict[str, dict]] = {}
    for r in p.get("per_layer", []):
        by_layer.setdefault(r["layer"], {})[r["method"]] = r
    primary = p.get("primary_method", methods[0] if methods else "")
    rows = []
    for layer in sorted(by_layer):
        recs = by_layer[layer]
        rows.append([fmt(layer)] + [fmt((recs.get(meth) or {}).get("auroc")) for meth in methods]
                    + [fmt((recs.get(primary) or {}).get("recall_at_fpr"))])
    s.tables.append(Table("Held-out AUROC per layer", ["layer", *[f"AUROC {x}" for x in methods], f"recall ({primary})"], rows))
    return s


def _steering(m: dict[str, Any]) -> Section:
    st = m["steering"]
    s = Section("steering", SECTION_TITLES["steering"])
    s.paragraphs.append(
        f"{st.get('vector_method', '')} direction (harmful − harmless, pooling {st.get('pooling', '')}) added at "
        f"{st.get('hook', '')}, chosen by {st.get('selected_by', '')}; vector norm {fmt(st.get('vector_norm'))}. "
        f"Metric: refusal log-odds on {fmt(st.get('n_prompts'))} held-out harmful prompts; side effect: "
        f"KL(unsteered ‖ steered) on {fmt(st.get('n_harmless'))} harmless prompts, nats."
    )
    rows = [[fmt(x), fmt(r), fmt(d), fmt(k)] for x, r, d, k in zip(
        st.get("multipliers", []), st.get("refusal", []), st.get("refusal_delta", []), st.get("kl", []))]
    rows.insert(0, ["0 (unsteered)", fmt(st.get("baseline")), fmt(0.0), fmt(0.0)])
    ab = st.get("ablation") or {}
    if ab:
        rows.append(["ablated", fmt(ab.get("refusal")), fmt(ab.get("refusal_delta")), fmt(ab.get("kl"))])
    s.tables.append(Table("Dose-response", ["multiplier", "refusal log-odds", "Δ", "KL"], rows))
    return s


def _comparison(m: dict[str, Any]) -> Section:
    c = m["comparison"]
    s = Section("comparison", SECTION_TITLES["comparison"])
    s.paragraphs.append(f"a = {_model_line(m.get('model'))}; b = {_model_line(m.get('against'))}.")
    keys = [("aqi", "AQI"), ("subspace", "MSO"), ("probes", "AUROC")]
    layers = [r["layer"] for r in (c.get("aqi") or {}).get("per_layer", [])]
    transfer = (c.get("transfer") or {})
    t_probe = {r["layer"]: r for r in (transfer.get("probes") or {}).get("per_layer", [])}
    t_dir = {r["layer"]: r for r in (transfer.get("directions") or {}).get("per_layer", [])}
    rows = []
    for i, layer in enumerate(layers):
        row = [fmt(layer)]
        for key, _ in keys:
            recs = (c.get(key) or {}).get("per_layer", [])
            rec = recs[i] if i < len(recs) else {}
            row += [f"{fmt(rec.get('a'))} → {fmt(rec.get('b'))}", fmt(rec.get("delta"))]
        row += [fmt((t_probe.get(layer) or {}).get("auroc")), fmt((t_dir.get(layer) or {}).get("cosine"))]
        rows.append(row)
    header = ["layer"]
    for _, name in keys:
        header += [f"{name} a → b", f"Δ{name}"]
    header += ["a's probe on b (AUROC)", "cos(direction a, b)"]
    s.tables.append(Table("Per-layer metrics, deltas and transfer", header, rows))
    ts = transfer.get("steering") or {}
    cs = c.get("steering") or {}
    if ts:
        rows = [[fmt(x), fmt(r), fmt(k), fmt(rb), fmt(kb)] for x, r, k, rb, kb in zip(
            ts.get("multipliers", []), ts.get("refusal", []), ts.get("kl", []), cs.get("refusal_b", []), cs.get("kl_b", []))]
        rows.insert(0, ["0 (unsteered)", fmt(ts.get("baseline")), fmt(0.0), fmt(cs.get("baseline_b")), fmt(0.0)])
        s.tables.append(Table(
            f"Steering on b at {ts.get('hook', '')} (unsteered refusal on a: {fmt(cs.get('baseline_a'))})",
            ["multiplier", "a's vector: refusal", "a's vector: KL", "b's own vector: refusal", "b's own vector: KL"], rows,
        ))
    w = c.get("weights") or {}
    if w:
        rows = [[fmt(r.get("layer")), fmt(r.get("n_changed")), fmt(r.get("relative_update_norm")), fmt(r.get("mso_mean")),
                 fmt(r.get("baseline_mean")), fmt(r.get("update_in_weight_subspace")), fmt(r.get("update_along_direction"))]
                for r in w.get("per_layer", [])]
        s.tables.append(Table(
            f"Weight update U = W_b − W_a ({fmt(w.get('n_changed'))} of {fmt(w.get('n_matrices'))} matrices changed, "
            f"||U||/||W_a|| = {fmt(w.get('relative_update_norm'))})",
            ["layer", "changed", "||U||/||W||", "MSO(U, W_a)", "baseline", "U in W_a subspace", "U along direction"], rows,
            note=f"'U along direction': share of the residual-writing updates' energy along a's harmful-harmless "
                 f"direction (random: {fmt(w.get('direction_baseline'))}).",
        ))
    return s


def _provenance(m: dict[str, Any]) -> Section:
    s = Section("provenance", SECTION_TITLES["provenance"])
    for role in ("model", "against"):
        prov = m.get(role)
        if prov:
            s.tables.append(Table(f"{'Audited model (a)' if role == 'model' else 'Second checkpoint (b)'}",
                                  ["field", "value"], [[k, fmt(v)] for k, v in prov.items()]))
    settings = dict(m.get("settings") or {})
    datasets = settings.pop("datasets", {})
    rows = []
    for key, value in settings.items():
        if isinstance(value, dict):
            rows += [[f"{key}.{k}", fmt(v)] for k, v in value.items()]
        else:
            rows.append([key, fmt(value)])
    s.tables.append(Table("Settings", ["setting", "value"], rows))
    s.tables.append(Table("Prompt sets", ["role", "set", "prompts", "limit", "labels", "sha256", "cache"], [
        [role, d.get("name", ""), fmt(d.get("n_prompts")), fmt(d.get("limit")), ", ".join(d.get("label_names", [])),
         str(d.get("sha256", ""))[:16], d.get("cache", "")]
        for role, d in datasets.items()
    ]))
    timings = m.get("timings_s") or {}
    if timings:
        s.tables.append(Table("Time per stage (s)", ["stage", "seconds"], [[k, fmt(float(v), 3)] for k, v in timings.items()]))
    s.paragraphs.append(
        f"metrics.json: schema {m.get('schema')} version {m.get('schema_version')}, geomprobe {m.get('geomprobe_version', '')}, "
        f"written {m.get('created_utc', '')}."
    )
    return s


def build_sections(metrics: dict[str, Any], figures: Sequence[FigureRef] = (), gates: Sequence[Any] = ()) -> list[Section]:
    """Report sections (summary, one per stage present, comparison, provenance) with their figures."""
    builders = {"aqi": _aqi, "subspace": _subspace, "probes": _probes, "steering": _steering, "comparison": _comparison}
    sections = [_summary(metrics, gates)]
    for key, build in builders.items():
        if metrics.get(key):
            sections.append(build(metrics))
    sections.append(_provenance(metrics))
    by_key = {s.key: s for s in sections}
    for fig in figures:
        target = by_key.get(fig.section)
        if target is None:
            raise GeomprobeError(f"figure {fig.key!r} names unknown report section {fig.section!r}")
        target.figures.append(fig)
    return sections


def report_title(metrics: dict[str, Any]) -> str:
    model = (metrics.get("model") or {}).get("model_id", "model")
    against = (metrics.get("against") or {}).get("model_id")
    return f"geomprobe audit: {model}" + (f" vs {against}" if against else "")


# -- HTML ----------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em;border-bottom:2px solid #ddd;padding-bottom:.3em}
h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #eee;padding-bottom:.2em}
h3{font-size:1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0 1em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right;vertical-align:top}
th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
.note{font-size:.85em;color:#555}
.failed{color:#b00020;font-weight:bold}
nav a{margin-right:1em}
"""


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = []
    for row in t.rows:
        cells = []
        for cell in row:
            cls = " class='failed'" if cell == "FAILED" else ""
            cells.append(f"<td{cls}>{html.escape(str(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f"<p class='note'>{html.escape(t.note)}</p>" if t.note else ""
    return f"<h3>{html.escape(t.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def _data_uri(path: Path) -> str:
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise GeomprobeError(f"figure {path} is not a PNG file; save plots as .png")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def render_html(metrics: dict[str, Any], figures: Sequence[FigureRef] = (), gates: Sequence[Any] = ()) -> str:
    """The report as one self-contained HTML document (images embedded, no external resources)."""
    sections = build_sections(metrics, figures, gates)
    title = report_title(metrics)
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<nav>" + "".join(f"<a href='#{s.key}'>{html.escape(s.title)}</a>" for s in sections) + "</nav>",
    ]
    for s in sections:
        parts.append(f"<section id='{s.key}'><h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        parts += [_html_table(t) for t in s.tables]
        for fig in s.figures:
            parts.append(
                f"<figure id='fig-{html.escape(fig.key)}'><img src='{_data_uri(fig.path)}' alt='{html.escape(fig.title)}'>"
                f"<figcaption>{html.escape(fig.title)}{(': ' + html.escape(fig.caption)) if fig.caption else ''}"
                f"</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# -- Markdown ------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    lines = [f"**{_md_cell(t.title)}**", "", "| " + " | ".join(_md_cell(h) for h in t.header) + " |",
             "|" + "|".join("---" for _ in t.header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.note:
        lines += ["", f"_{_md_cell(t.note)}_"]
    return "\n".join(lines)


def render_markdown(metrics: dict[str, Any], figures: Sequence[FigureRef] = (), gates: Sequence[Any] = (),
                    relative_to: str | Path | None = None) -> str:
    """The report as Markdown; images are linked by path relative to ``relative_to``."""
    sections = build_sections(metrics, figures, gates)
    out = [f"# {report_title(metrics)}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        for t in s.tables:
            out += [_md_table(t), ""]
        for fig in s.figures:
            path = Path(fig.path)
            if relative_to is not None:
                try:
                    path = path.resolve().relative_to(Path(relative_to).resolve())
                except ValueError:
                    pass
            out += [f"![{fig.title}]({path.as_posix()})", ""]
            if fig.caption:
                out += [f"_{fig.caption}_", ""]
    return "\n".join(out)


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_report(metrics: dict[str, Any], figures: Sequence[FigureRef], out_dir: str | Path,
                 gates: Sequence[Any] = ()) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise GeomprobeError(f"report folder {str(out_dir)!r} does not exist; create it first")
    html_path = _write_text(out_dir / "report.html", render_html(metrics, figures, gates))
    md_path = _write_text(out_dir / "report.md", render_markdown(metrics, figures, gates, relative_to=out_dir))
    return html_path, md_path
