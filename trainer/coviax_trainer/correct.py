"""Stage 2, correct: pseudo-labels out for review, corrected label maps back in.

``coviax train correct --export N`` picks the N slices of the stage-1 set with
the most lesion (GGO + consolidation) pixels, spread over the scans, and
writes them to ``RUN/review/`` (or ``--out DIR``)::

    README.md                        what the files are and the label codes
    review.json                      the exported slices (scan, slice, files)
    <scan>__z<slice>.overlay.png     CT (lung window) | CT with the pseudo-label colours
    <scan>__z<slice>.ct.png          the CT slice alone (lung window), to trace on
    <scan>__z<slice>.label.png       THE EDITABLE LABEL MAP: palette PNG, pixel value = label code

``coviax train correct --import DIR`` reads every ``<scan>__z<slice>.label.png``
(or ``.label.nii.gz`` / ``.label.nii``) in DIR, checks scan, slice, size and
codes, and copies it to ``RUN/corrections/``. From then on the correction
replaces the generated label of that slice in every later stage (the loader
reads ``RUN/corrections/`` directly; the manifests record ``corrected: true``),
and stages already done after stage 1 are marked stale so the next run redoes them.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from coviax.errors import CoviaxError
from coviax.labels import COLOURS, Label
from coviax_trainer.data import correction_file, read_manifest, refresh_manifests
from coviax_trainer.labelmaps import CorrectionError, lung_window, overlay_rgb, read_label_image, write_label_png
from coviax_trainer.rundir import RunDir, atomic_path, write_json

LABEL_SUFFIXES = (".label.png", ".label.nii.gz", ".label.nii")
NAME_RE = re.compile(r"^(?P<scan>[A-Za-z0-9_.-]+?)__z(?P<z>\d{1,5})$")
DOWNSTREAM = ["unet-a", "relabel", "unet-b", "export"]


README = """# Pseudo-labels for review

These slices come from stage 1 (K-means pseudo-labels) of the COViaX training run in
`{run}`. Correct the label maps and import them with

    coviax train correct --config {config} --run-dir {run} --import {here}

## Files, one set per slice

| file | what |
|---|---|
| `<scan>__z<slice>.overlay.png` | left: the CT slice (lung window -1350..150 HU); right: the same with the labels in colour |
| `<scan>__z<slice>.ct.png` | the CT slice alone, to put under the label map as a layer |
| `<scan>__z<slice>.label.png` | **the label map to edit**: an indexed (palette) PNG, same size as the CT slice; the pixel *value* is the label code |

Keep the file name: `<scan>` and `<slice>` say which slice a correction belongs to. Only the
`.label.png` files are read back (a 2D NIfTI `<scan>__z<slice>.label.nii.gz` with the same
codes is accepted too). Files you did not edit can stay in the folder or be deleted: an
imported file always replaces the generated label, so delete the ones you did not check.

## Label codes (coviax/labels.py)

| code | class | palette colour (RGB) |
|---|---|---|
| 0 | background (outside the lungs) | black |
| 1 | healthy lung | {c1} |
| 2 | vessel (and bronchial wall) | {c2} |
| 3 | ground-glass opacity (GGO) | {c3} |
| 4 | consolidation | {c4} |

Edit with a tool that keeps indexed colour (GIMP: Image > Mode > Indexed stays; paint with
the palette colours and no anti-aliasing). An RGB file is accepted if every pixel has
exactly one of the palette colours above; any other value or colour is refused with the
pixel position.

Research use only; not a medical device.
"""


# --------------------------------------------------------------------------- export

def export_for_review(run: RunDir, n: int, out: Path | None = None) -> Path:
    if not run.is_done("pseudo-labels"):
        raise CoviaxError("no pseudo-labels in this run folder yet; run `coviax train pseudo-labels` first")
    if n < 1:
        raise CoviaxError("--export needs a number of slices >= 1")
    out = Path(out) if out else run.path("review")
    out.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(run, "pseudo")
    # lesion pixel count per slice, to pick the informative ones
    scored: dict[str, list[tuple[int, dict]]] = {}
    cache: dict[str, dict] = {}
    for r in rows:
        if r["shard"] not in cache:
            with np.load(run.path("pseudo", r["shard"])) as z:
                cache[r["shard"]] = {"label": z["label"], "hu": z["hu"]}
        lab = cache[r["shard"]]["label"][r["row"]]
        scored.setdefault(r["scan"], []).append((int(np.count_nonzero(lab >= Label.GGO)), r))
    for v in scored.values():
        v.sort(key=lambda t: (-t[0], t[1]["slice"]))
    chosen: list[dict] = []
    depth = 0
    while len(chosen) < n and any(depth < len(v) for v in scored.values()):
        for scan in sorted(scored):
            if depth < len(scored[scan]) and len(chosen) < n:
                chosen.append(scored[scan][depth][1])
        depth += 1
    from PIL import Image

    items = []
    for r in chosen:
        data = cache[r["shard"]]
        hu, lab = data["hu"][r["row"]], data["label"][r["row"]]
        stem = f"{r['scan']}__z{int(r['slice']):04d}"
        with atomic_path(out / f"{stem}.overlay.png") as tmp:
            Image.fromarray(overlay_rgb(hu, lab)).save(tmp, format="PNG")
        with atomic_path(out / f"{stem}.ct.png") as tmp:
            Image.fromarray(lung_window(hu)).save(tmp, format="PNG")
        write_label_png(out / f"{stem}.label.png", lab)
        items.append({"scan": r["scan"], "slice": int(r["slice"]), "label": f"{stem}.label.png",
                      "overlay": f"{stem}.overlay.png", "ct": f"{stem}.ct.png", "corrected_before": bool(r.get("corrected"))})
    colours = {c: "({}, {}, {})".format(*COLOURS[Label(c)]) for c in range(1, 5)}
    (out / "README.md").write_text(
        README.format(run=run.root, config=run.config.path, here=out, c1=colours[1], c2=colours[2], c3=colours[3], c4=colours[4])
    )
    write_json(out / "review.json", {"run": str(run.root), "slices": items})
    return out


# --------------------------------------------------------------------------- import

def _parse_name(path: Path) -> tuple[str, int] | None:
    name = path.name
    for suffix in LABEL_SUFFIXES:
        if name.lower().endswith(suffix):
            m = NAME_RE.match(name[: -len(suffix)])
            if m:
                return m.group("scan"), int(m.group("z"))
    return None


def import_corrections(run: RunDir, directory: Path) -> dict:
    """Check and copy every label file of ``directory`` into RUN/corrections/; returns a summary."""
    if not run.is_done("pseudo-labels"):
        raise CoviaxError("no pseudo-labels in this run folder yet; run `coviax train pseudo-labels` first")
    directory = Path(directory)
    if not directory.is_dir():
        raise CorrectionError(f"{directory}: no such folder of corrected label maps")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.lower().endswith(LABEL_SUFFIXES))
    if not files:
        raise CorrectionError(
            f"{directory}: no corrected label maps found; expected files named <scan>__z<slice>.label.png "
            "(as `coviax train correct --export` writes them)"
        )
    rows = {(r["scan"], int(r["slice"])): r for r in read_manifest(run, "pseudo")}
    checked = []
    for p in files:
        key = _parse_name(p)
        if key is None:
            raise CorrectionError(f"{p}: name does not follow <scan>__z<slice>.label.png")
        if key not in rows:
            raise CorrectionError(f"{p}: scan {key[0]!r} slice {key[1]} is not in this run's pseudo-labels")
        labels = read_label_image(p)
        r = rows[key]
        with np.load(run.path("pseudo", r["shard"])) as z:
            expected = z["label"].shape[1:]
        if labels.shape != tuple(expected):
            raise CorrectionError(f"{p}: {labels.shape[1]}x{labels.shape[0]} pixels but the slice is {expected[1]}x{expected[0]}")
        checked.append((key, labels))
    imported, unchanged = [], 0
    for key, labels in checked:
        dest = correction_file(run, *key)
        if dest.is_file() and np.array_equal(read_label_image(dest), labels):
            unchanged += 1
            continue
        write_label_png(dest, labels)
        imported.append({"scan": key[0], "slice": key[1]})
    refresh_manifests(run)
    if imported:
        run.mark_stale(DOWNSTREAM, f"{len(imported)} correction(s) imported")
    digest = hashlib.sha256(json.dumps(sorted(str(p.name) for p in files)).encode()).hexdigest()[:12]
    return {"imported": len(imported), "unchanged": unchanged, "files": len(files), "from": str(directory), "digest": digest}
