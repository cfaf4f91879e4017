"""The one-page report: ``report.html`` (self-contained) and ``report.pdf`` (one A4 page).

Both show the same content, built once from ``report.json``'s dict: the study
label (never a patient identifier), the date of the analysis, the key numbers
and severity scores, the most affected slices with the class overlay (the
montage's slice choice and colours), the 3D render, the lung method, lesion
engine and model, and the research-use notice. The HTML inlines its images as
base64 PNG and forbids every external load with a Content-Security-Policy, so it
opens offline and cannot leak a request. The PDF is drawn with matplotlib; the
same figure rasterised is the page of the DICOM Secondary Capture.

Patient names, IDs and birth dates are not in the report dict and nothing here
reads DICOM headers.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

import coviax
from coviax.export.montage import most_affected_slices, overlay_rgb
from coviax.labels import COLOURS, Label

A4_INCHES = (8.27, 11.69)
PAGE_DPI = 100  # the Secondary Capture raster: 827 x 1169 pixels


# --------------------------------------------------------------------------- content


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{float(value):.{digits}f}{suffix}"


def page_facts(report: dict) -> dict:
    """The texts of the page, as (label, value) rows per section; plain strings, not escaped."""
    lung = report["lungs"]["volume_ml"]
    les = report["lesions"]["volume_ml"]
    ratios = report["ratios_pct"]
    scores = report.get("scores") or {}
    created = str(report.get("created_utc") or "")
    facts = {
        "study": report.get("study_label") or "(no study label given)",
        "date": created.replace("T", " ").replace("+00:00", " UTC"),
        "input": f"{report['input']['slices']} slices, voxel {' x '.join(f'{s:g}' for s in report['input']['spacing_mm'])} mm (z y x)",
        "volumes": [
            ("Lung volume", f"{lung['total'] / 1000:.2f} L (right {lung['right'] / 1000:.2f}, left {lung['left'] / 1000:.2f})"),
            ("Ground-glass opacity", f"{les['ggo']:.1f} mL"),
            ("Consolidation", f"{les['consolidation']:.1f} mL"),
            ("VRall (GGO + consolidation)", f"{ratios['all']:.2f} % of lung"),
            ("VRggo / VRcs", f"{ratios['ggo']:.2f} % / {ratios['consolidation']:.2f} %"),
            ("Lesion blobs", str(report.get("blob_count", 0))),
        ],
        "scores": [],
        "zones": None,
        "lobes": None,
        "thresholds": "",
        "method": [
            ("Lung method", str(report["lungs"]["method"])),
            ("Lesion engine", f"{report['lesions']['engine']} (model {report['lesions']['model']})"),
            ("Software", f"{report['software']['name']} {report['software']['version']}"),
        ],
        "notice": coviax.RESEARCH_USE_NOTICE,
    }
    if scores:
        po, pho = scores["opacity_pct"], scores["high_opacity_pct"]
        facts["scores"] = [
            ("Percent of opacity", f"{_fmt(po['overall'], 2, ' %')} (right {_fmt(po['right'], 1, ' %')}, left {_fmt(po['left'], 1, ' %')})"),
            (f"Percent of high opacity (> {scores['high_opacity_hu']} HU)",
             f"{_fmt(pho['overall'], 2, ' %')} (right {_fmt(pho['right'], 1, ' %')}, left {_fmt(pho['left'], 1, ' %')})"),
            ("Six-zone score", f"{scores['six_zone']['total']} / {scores['six_zone']['max']}"),
        ]
        zones = scores["six_zone"]["zones"]
        facts["zones"] = [
            (zone, zones[f"right_{zone}"]["score"], zones[f"left_{zone}"]["score"]) for zone in ("upper", "middle", "lower")
        ]
        lobe = scores["lobe_score"]
        if lobe.get("computed"):
            facts["scores"].append(("Lobe score (Chung/Pan)", f"{lobe['total']} / {lobe['max']}"))
            facts["lobes"] = [(name.replace("_", " "), v["score"]) for name, v in lobe["lobes"].items()]
        else:
            facts["scores"].append(("Lobe score (Chung/Pan)", "not computed: " + lobe.get("reason", "")))
        th = scores["research_thresholds"]
        facts["thresholds"] = (
            f"For context only (research thresholds, not clinical cut-offs): in the thesis's {th['cohort_patients']}-patient "
            f"cohort, VRall above {th['vr_all_oxygen_need_pct']} % was the Youden cut-off for oxygen need "
            f"(AUC {th['vr_all_oxygen_need_auc']}) and {th['vr_all_diagnosis_pct']} % for diagnosis. Not validated."
        )
    return facts


def slice_overlays(hu: np.ndarray, labels: np.ndarray, n: int = 6) -> list[tuple[int, np.ndarray]]:
    """(slice index, RGB overlay cropped to the lungs) of the ``n`` most affected slices."""
    slices = most_affected_slices(labels, n)
    cavity = np.any(labels > 0, axis=0)
    ys, xs = np.flatnonzero(cavity.any(axis=1)), np.flatnonzero(cavity.any(axis=0))
    if ys.size:
        m = 8
        y0, y1 = max(0, ys[0] - m), min(labels.shape[1], ys[-1] + m + 1)
        x0, x1 = max(0, xs[0] - m), min(labels.shape[2], xs[-1] + m + 1)
    else:
        y0, y1, x0, x1 = 0, labels.shape[1], 0, labels.shape[2]
    return [(z, overlay_rgb(hu[z, y0:y1, x0:x1], labels[z, y0:y1, x0:x1])) for z in slices]


def _png_base64(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=4)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:0;background:#fff;color:#111}
main{max-width:1100px;margin:0 auto;padding:16px 24px}
h1{font-size:22px;margin:0 0 4px}
.notice{background:#fff3cd;border:1px solid #d39e00;padding:6px 10px;font-weight:bold;margin:8px 0}
.meta{color:#444;font-size:14px}
.cols{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.cols>div{flex:1 1 420px}
table{border-collapse:collapse;font-size:14px;margin:6px 0 12px}
th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
h2{font-size:16px;margin:14px 0 4px}
.context{font-size:12px;color:#555;font-style:italic;border-left:3px solid #aaa;padding-left:8px}
.slices{display:grid;grid-template-columns:repeat(3,1fr);gap:8px}
figure{margin:0}
figure img{width:100%;image-rendering:auto;display:block}
figcaption{font-size:12px;color:#444;text-align:center}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
footer{font-size:12px;color:#444;margin-top:12px;border-top:1px solid #ccc;padding-top:6px}
"""


def _rows(rows, ids: dict[str, str] | None = None) -> str:
    ids = ids or {}
    out = []
    for label, value in rows:
        attr = f' id="{ids[label]}"' if label in ids else ""
        out.append(f"<tr><th>{html.escape(label)}</th><td{attr}>{html.escape(str(value))}</td></tr>")
    return "\n".join(out)


def build_html(report: dict, overlays: list[tuple[int, np.ndarray]], render_rgb: np.ndarray | None, n_slices: int) -> str:
    """The whole page as one HTML string (images inlined)."""
    f = page_facts(report)
    ids = {"VRall (GGO + consolidation)": "vr-all", "Lung volume": "lung-volume", "Six-zone score": "six-zone",
           "Lobe score (Chung/Pan)": "lobe-score", "Percent of opacity": "opacity", "Ground-glass opacity": "ggo-volume",
           "Consolidation": "consolidation-volume"}
    ids.update({label: "high-opacity" for label, _ in f["scores"] if label.startswith("Percent of high opacity")})
    zones = ""
    if f["zones"]:
        zones = ("<table><tr><th>zone</th><th>right</th><th>left</th></tr>"
                 + "".join(f"<tr><th>{z}</th><td class='num'>{r}</td><td class='num'>{l}</td></tr>" for z, r, l in f["zones"])
                 + "</table>")
    lobes = ""
    if f["lobes"]:
        lobes = ("<table><tr><th>lobe</th><th>score (0-5)</th></tr>"
                 + "".join(f"<tr><th>{html.escape(n)}</th><td class='num'>{s}</td></tr>" for n, s in f["lobes"])
                 + "</table>")
    figures = "".join(
        f"<figure><img alt='axial slice {z + 1} with overlay' src='data:image/png;base64,{_png_base64(rgb)}'>"
        f"<figcaption>slice {z + 1} of {n_slices}</figcaption></figure>"
        for z, rgb in overlays
    )
    legend = "".join(
        f"<span style='background:rgb{COLOURS[lab]}'></span>{html.escape(lab.display_name)}"
        for lab in (Label.VESSEL, Label.GGO, Label.CONSOLIDATION)
    )
    render = (f"<figure><img alt='3D reconstruction, anterior view' src='data:image/png;base64,{_png_base64(render_rgb)}'>"
              "<figcaption>3D reconstruction, anterior view (patient's right on the left)</figcaption></figure>"
              if render_rgb is not None else "<p>3D render not available.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>COViaX report - {html.escape(f['study'])}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>COViaX chest CT lung damage quantification</h1>
<div class="notice" id="notice">{html.escape(f['notice'])}</div>
<div class="meta">Study: <b id="study-label">{html.escape(f['study'])}</b> &middot; analysed {html.escape(f['date'])}
 &middot; {html.escape(f['input'])}</div>
<div class="cols"><div>
<h2>Volumes and ratios</h2><table>{_rows(f['volumes'], ids)}</table>
<h2>Severity scores</h2><table>{_rows(f['scores'], ids)}</table>
{zones}{lobes}
<p class="context" id="research-thresholds">{html.escape(f['thresholds'])}</p>
</div><div>{render}</div></div>
<h2>Most affected slices</h2>
<div class="legend">overlay:{legend}</div>
<div class="slices">{figures}</div>
<h2>Method</h2><table>{_rows(f['method'])}</table>
<footer>{html.escape(f['notice'])} The numbers are measurements of an automatic segmentation and have to be read with the images.</footer>
</main></body></html>
"""


def write_html(report: dict, hu: np.ndarray, labels: np.ndarray, render_rgb: np.ndarray | None, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(build_html(report, slice_overlays(hu, labels), render_rgb, hu.shape[0]), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- PDF / raster page


def page_figure(report: dict, overlays: list[tuple[int, np.ndarray]], render_rgb: np.ndarray | None, n_slices: int):
    """The A4 page as a matplotlib Figure (Agg canvas attached)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    f = page_facts(report)
    fig = Figure(figsize=A4_INCHES, dpi=PAGE_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    fig.text(0.05, 0.972, "COViaX chest CT lung damage quantification", fontsize=15, weight="bold", va="top")
    fig.text(0.05, 0.943, _wrap(f["notice"], 110), fontsize=8, weight="bold", va="top", color="#8a5a00",
             bbox={"facecolor": "#fff3cd", "edgecolor": "#d39e00", "pad": 3})
    fig.text(0.05, 0.906, f"Study: {f['study']}    Analysed: {f['date']}", fontsize=9.5, va="top")
    fig.text(0.05, 0.889, f["input"], fontsize=8.5, va="top", color="#444")

    _numbers_column(fig, f)

    # Right column: the 3D render (it carries its own title and legend).
    if render_rgb is not None:
        ax = fig.add_axes((0.56, 0.50, 0.41, 0.40))
        ax.imshow(render_rgb, interpolation="antialiased")
        ax.axis("off")
    # Slices: two rows of three.
    fig.text(0.05, 0.478, "Most affected slices (lung window, class overlay)", fontsize=10.5, weight="bold", va="top")
    for k, (z, rgb) in enumerate(overlays[:6]):
        row, col = divmod(k, 3)
        a = fig.add_axes((0.05 + col * 0.305, 0.285 - row * 0.19, 0.29, 0.17))
        a.imshow(rgb, interpolation="antialiased")
        a.set_title(f"slice {z + 1} of {n_slices}", fontsize=8, pad=2)
        a.axis("off")
    handles = [Patch(color=np.asarray(COLOURS[l]) / 255, label=l.display_name) for l in (Label.VESSEL, Label.GGO, Label.CONSOLIDATION)]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.088), ncol=3, fontsize=8, frameon=False)
    fig.text(0.05, 0.058, "   |   ".join(f"{k}: {v}" for k, v in f["method"]), fontsize=7.5, va="top", color="#333")
    fig.text(0.05, 0.040, _wrap(f["notice"] + " The numbers are measurements of an automatic segmentation; "
                                "read them with the images.", 130), fontsize=7, va="top", color="#333")
    return fig


def _numbers_column(fig, f: dict) -> None:
    """The page's left column: volumes and ratios, severity scores (six-zone table, lobes), thresholds."""

    def section(title, rows, y, value_x=0.32, size=8.5, width=34):
        fig.text(0.05, y, title, fontsize=10.5, weight="bold", va="top")
        y -= 0.019
        for label, value in rows:
            lines = _wrap(str(value), width)
            fig.text(0.05, y, label, fontsize=size, va="top")
            fig.text(value_x, y, lines, fontsize=size, va="top")
            y -= 0.0155 * (lines.count("\n") + 1)
        return y - 0.006

    y = section("Volumes and ratios", [(k.replace(" (GGO + consolidation)", ""), v) for k, v in f["volumes"]], 0.868)
    score_rows = [(k.replace("Percent of high opacity", "High opacity"), v) for k, v in f["scores"]]
    y = section("Severity scores", [r for r in score_rows if not r[0].startswith("Lobe")], y)
    if f["zones"]:
        for k, row in enumerate([("six zones", "right", "left")] + list(f["zones"])):
            weight = "bold" if k == 0 else "normal"
            for x, text in zip((0.07, 0.17, 0.23), row):
                fig.text(x, y - 0.0135 * k, str(text), fontsize=8, va="top", weight=weight)
        y -= 0.0135 * 4 + 0.006
    y = section("", [r for r in score_rows if r[0].startswith("Lobe")], y + 0.019, width=30)
    if f["lobes"]:
        fig.text(0.07, y, _wrap(", ".join(f"{n} {s}" for n, s in f["lobes"]), 70), fontsize=7.5, va="top")
        y -= 0.03
    if f["thresholds"]:
        fig.text(0.05, y - 0.002, _wrap(f["thresholds"], 78), fontsize=7, va="top", style="italic", color="#555")


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def write_pdf(report: dict, hu: np.ndarray, labels: np.ndarray, render_rgb: np.ndarray | None,
              path: str | Path | None) -> tuple[Path | None, np.ndarray]:
    """Write ``report.pdf`` (when ``path`` is given) and return the page raster (RGB uint8, A4 at 100 dpi)."""
    fig = page_figure(report, slice_overlays(hu, labels), render_rgb, hu.shape[0])
    if path is not None:
        path = Path(path)
        fig.savefig(path, format="pdf", metadata={"Title": "COViaX report", "Creator": f"COViaX {coviax.__version__}",
                                                  "Subject": "Research use only - not a medical device"})
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return path, rgb
