"""``coviax cohort report DIR``: one page for the trial's data manager, from ``DIR/cohort.csv``.

``cohort.html`` (self-contained: the plot is embedded) and ``cohort.pdf`` (the same content over
matplotlib pages) hold:

1. the counts (done, failed, not run) and the run's throughput (``cohort_run.json``);
2. VRall per site and timepoint: one box (with every scan as a point) per (site, timepoint);
3. the scans to look at first: failed ones, then QC-flagged ones (most flags first), each with its
   flags and error; then every other scan;
4. when the manifest had ``reader_*`` columns: the agreement of COViaX's VRall with each reader
   (ICC(2,1) with its 95 % CI and Bland-Altman, COViaX minus reader) and, with two readers or more,
   among the readers -- the statistics of ``coviax stats agreement``
   (:mod:`coviax_research.stats`).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from coviax import RESEARCH_USE_NOTICE
from coviax_cohort.table import read_table

SHOWN = ("id", "subject", "timepoint", "site", "status", "vr_all_pct", "d_vr_all_pp", "lung_ml", "lung_method",
         "qc_flags", "error")


def ordered_for_review(rows: list[dict]) -> list[dict]:
    """Failed first, then flagged (most flags first), then the rest; the manifest's order within each."""
    def key(item):
        i, r = item
        flags = len([f for f in (r.get("qc_flags") or "").split(";") if f])
        return (0 if r["status"] != "done" else 1 if flags else 2, -flags, i)

    return [r for _, r in sorted(enumerate(rows), key=key)]


def agreement(rows: list[dict]) -> list[dict]:
    """ICC(2,1) and Bland-Altman of COViaX's VRall against each reader column, and among readers."""
    from coviax_research.stats import bland_altman, icc2_1

    readers = sorted({k for r in rows for k in r if k.startswith("reader_")})
    pairs = [("coviax", reader) for reader in readers] + [
        (a, b) for i, a in enumerate(readers) for b in readers[i + 1:]]
    results = []
    for a, b in pairs:
        col_a = "vr_all_pct" if a == "coviax" else a
        both = [(r[col_a], r[b]) for r in rows if r["status"] == "done" and r.get(col_a) is not None
                and r.get(b) is not None]
        entry = {"first": a, "second": b, "n": len(both)}
        try:
            icc = icc2_1([list(p) for p in both])
            ba = bland_altman([p[0] for p in both], [p[1] for p in both])
            entry.update(icc=icc.icc, icc_ci=(icc.ci_low, icc.ci_high), bias=ba.bias, loa=(ba.loa_low, ba.loa_high))
        except Exception as exc:  # too few cases, or no variance: say so in the report
            entry["error"] = str(exc)
        results.append(entry)
    return results


def vr_plot_png(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    done = [r for r in rows if r["status"] == "done" and r.get("vr_all_pct") is not None]
    groups: dict[tuple[str, str], list[float]] = {}
    for r in done:
        groups.setdefault((r.get("site") or "-", r["timepoint"]), []).append(r["vr_all_pct"])
    keys = sorted(groups)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(keys) + 2), 4))
    if keys:
        ax.boxplot([groups[k] for k in keys], showfliers=False)
        for i, k in enumerate(keys, start=1):
            ax.plot([i] * len(groups[k]), groups[k], "o", alpha=0.6, markersize=4)
        ax.set_xticks(range(1, len(keys) + 1), [f"{s}\nt={t}" for s, t in keys])
    ax.set_ylabel("VRall (% of lung)")
    ax.set_title(f"VRall per site and timepoint ({len(done)} scans)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return html.escape("" if value is None else str(value))


def _html(rows, summary, plot_png, stats) -> str:
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("done", "failed", "not run")}
    flagged = sum(1 for r in rows if r.get("qc_flags"))
    head = "".join(f"<th>{c}</th>" for c in SHOWN)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in SHOWN) + "</tr>"
                   for r in ordered_for_review(rows))
    rate = summary.get("scans_per_s")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>COViaX cohort report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>",
        "<h1>COViaX cohort report</h1>", f"<p><em>{html.escape(RESEARCH_USE_NOTICE)}</em></p>",
        f"<p>{len(rows)} scans: {counts['done']} done, {counts['failed']} failed, {counts['not run']} not run; "
        f"{flagged} with QC flags.", f" Last run: {rate} scans/s with {summary.get('workers')} worker(s) "
        f"({html.escape(str(summary.get('address')))})." if rate is not None else "", "</p>",
        "<h2>VRall per site and timepoint</h2>",
        f"<img alt='VRall per site and timepoint' src='data:image/png;base64,{base64.b64encode(plot_png).decode()}'>",
        "<h2>Scans, QC-flagged first</h2><p>QC flags and their thresholds: docs/COHORTS.md "
        "(thick_slices &gt; 3 mm, uneven_spacing, missing_slices, lung_volume outside 2-9 L, truncated_lungs (edge slice &gt;= 5 % of the largest), "
        "noise &gt; 30 HU in air, lung_fallback).</p>",
        f"<table><tr>{head}</tr>{body}</table>",
    ]
    if stats:
        parts.append("<h2>Agreement with readers (VRall, %)</h2><table><tr><th>first</th><th>second</th><th>n</th>"
                     "<th>ICC(2,1) [95 % CI]</th><th>Bland-Altman bias [limits]</th></tr>")
        for s in stats:
            if "error" in s:
                parts.append(f"<tr><td>{s['first']}</td><td>{s['second']}</td><td>{s['n']}</td>"
                             f"<td colspan=2>{html.escape(s['error'])}</td></tr>")
            else:
                parts.append(f"<tr><td>{s['first']}</td><td>{s['second']}</td><td>{s['n']}</td>"
                             f"<td>{s['icc']:.3f} [{s['icc_ci'][0]:.3f}, {s['icc_ci'][1]:.3f}]</td>"
                             f"<td>{s['bias']:+.2f} [{s['loa'][0]:+.2f}, {s['loa'][1]:+.2f}]</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def _pdf(path: Path, rows, plot_png, stats) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import image as mpimg
    from matplotlib import pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    lines = [f"{r['id']}  {r['status']}  VRall {r.get('vr_all_pct') or 0:.2f} %  flags: {r.get('qc_flags') or '-'}"
             + (f"  error: {r['error'][:60]}" if r.get("error") else "") for r in ordered_for_review(rows)]
    lines += [""] + [f"{s['first']} vs {s['second']} (n={s['n']}): " + (s["error"] if "error" in s else
                     f"ICC {s['icc']:.3f}, bias {s['bias']:+.2f}") for s in stats]
    with PdfPages(path) as pdf:
        fig = plt.figure(figsize=(8.27, 11.69))
        fig.text(0.05, 0.97, "COViaX cohort report - " + RESEARCH_USE_NOTICE[:90], fontsize=8, va="top")
        ax = fig.add_axes([0.05, 0.55, 0.9, 0.4])
        ax.imshow(mpimg.imread(io.BytesIO(plot_png)))
        ax.axis("off")
        for start in range(0, len(lines), 45):
            if start:
                pdf.savefig(fig)
                plt.close(fig)
                fig = plt.figure(figsize=(8.27, 11.69))
            top = 0.52 if start == 0 else 0.97
            fig.text(0.05, top, "\n".join(lines[start:start + 45]), fontsize=6.5, va="top", family="monospace")
        pdf.savefig(fig)
        plt.close(fig)


def write_report(out_dir: Path, pdf: bool = True) -> dict[str, Path]:
    rows = read_table(out_dir)
    summary_path = Path(out_dir) / "cohort_run.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    plot = vr_plot_png(rows)
    stats = agreement(rows) if any(k.startswith("reader_") for r in rows for k in r) else []
    written = {"html": Path(out_dir) / "cohort.html"}
    written["html"].write_text(_html(rows, summary, plot, stats), encoding="utf-8")
    if pdf:
        written["pdf"] = Path(out_dir) / "cohort.pdf"
        _pdf(written["pdf"], rows, plot, stats)
    return written
