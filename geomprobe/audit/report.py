"""Audit reports: one self-contained HTML page and a Markdown twin, rendered from metrics.json.

Each audit section renders its own block (``AuditSection.report``, in registry order); this
module adds the summary and provenance blocks around them and writes the files. The HTML embeds
every plot as a base64 ``data:image/png`` URI and carries its own small CSS, so the single file
reads offline in any browser. The Markdown file links the PNGs by relative path (keep it next to
them). Both show the same tables.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geomprobe.audit.sections import SECTIONS
from geomprobe.audit.tables import FigureRef, ReportBlock, Table, fmt, model_line
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import atomic_write_text

__all__ = ["FigureRef", "build_sections", "fmt", "render_html", "render_markdown", "report_title", "write_report"]


def _summary(m: dict[str, Any], gates: Sequence[Any]) -> ReportBlock:
    block = ReportBlock("summary", "Summary")
    rows = [["audited model", model_line(m.get("model"))]]
    if m.get("against"):
        rows.append(["compared with", model_line(m.get("against"))])
    rows.append(["layers audited", fmt(len((m.get("settings") or {}).get("layers", [])))])
    for section in SECTIONS:
        rows += section.summary_rows(m)
    block.tables.append(Table("Headline numbers", ["metric", "value"], rows))
    if gates:
        block.tables.append(
            Table(
                "--fail-if gates",
                ["condition", "result", "value"],
                [[g.condition.text, "FAILED" if g.failed else "passed", g.detail] for g in gates],
            )
        )
    return block


def _provenance(m: dict[str, Any]) -> ReportBlock:
    block = ReportBlock("provenance", "Provenance and settings")
    for role in ("model", "against"):
        prov = m.get(role)
        if prov:
            block.tables.append(
                Table(
                    f"{'Audited model (a)' if role == 'model' else 'Second checkpoint (b)'}",
                    ["field", "value"],
                    [[k, fmt(v)] for k, v in prov.items()],
                )
            )
    settings = dict(m.get("settings") or {})
    datasets = settings.pop("datasets", {})
    rows = []
    for key, value in settings.items():
        if isinstance(value, dict):
            rows += [[f"{key}.{k}", fmt(v)] for k, v in value.items()]
        else:
            rows.append([key, fmt(value)])
    block.tables.append(Table("Settings", ["setting", "value"], rows))
    block.tables.append(
        Table(
            "Prompt sets",
            ["role", "set", "prompts", "limit", "labels", "sha256", "cache"],
            [
                [
                    role,
                    d.get("name", ""),
                    fmt(d.get("n_prompts")),
                    fmt(d.get("limit")),
                    ", ".join(d.get("label_names", [])),
                    str(d.get("sha256", ""))[:16],
                    d.get("cache", ""),
                ]
                for role, d in datasets.items()
            ],
        )
    )
    timings = m.get("timings_s") or {}
    if timings:
        block.tables.append(
            Table("Time per stage (s)", ["stage", "seconds"], [[k, fmt(float(v), 3)] for k, v in timings.items()])
        )
    block.paragraphs.append(
        f"metrics.json: schema {m.get('schema')} version {m.get('schema_version')}, geomprobe {m.get('geomprobe_version', '')}, "
        f"written {m.get('created_utc', '')}."
    )
    return block


def build_sections(metrics: dict[str, Any], figures: Sequence[FigureRef] = (), gates: Sequence[Any] = ()) -> list[ReportBlock]:
    """Report blocks (summary, one per section present in ``metrics``, provenance) with their figures."""
    blocks = [_summary(metrics, gates)]
    for section in SECTIONS:
        block = section.report(metrics) if section.writes_metrics and metrics.get(section.name) else None
        if block is not None:
            blocks.append(block)
    blocks.append(_provenance(metrics))
    by_key = {b.key: b for b in blocks}
    for fig in figures:
        target = by_key.get(fig.section)
        if target is None:
            raise GeomprobeError(f"figure {fig.key!r} names unknown report section {fig.section!r}")
        target.figures.append(fig)
    return blocks


def report_title(metrics: dict[str, Any]) -> str:
    model = (metrics.get("model") or {}).get("model_id", "model")
    against = (metrics.get("against") or {}).get("model_id")
    return f"geomprobe audit: {model}" + (f" vs {against}" if against else "")


# -- HTML ----------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:1.5em auto;
  padding:0 1em;color:#222;line-height:1.45}
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
    lines = [
        f"**{_md_cell(t.title)}**",
        "",
        "| " + " | ".join(_md_cell(h) for h in t.header) + " |",
        "|" + "|".join("---" for _ in t.header) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.note:
        lines += ["", f"_{_md_cell(t.note)}_"]
    return "\n".join(lines)


def render_markdown(
    metrics: dict[str, Any], figures: Sequence[FigureRef] = (), gates: Sequence[Any] = (), relative_to: str | Path | None = None
) -> str:
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


def write_report(
    metrics: dict[str, Any], figures: Sequence[FigureRef], out_dir: str | Path, gates: Sequence[Any] = ()
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise GeomprobeError(f"report folder {str(out_dir)!r} does not exist; create it first")
    html_path = atomic_write_text(out_dir / "report.html", render_html(metrics, figures, gates))
    md_path = atomic_write_text(out_dir / "report.md", render_markdown(metrics, figures, gates, relative_to=out_dir))
    return html_path, md_path
