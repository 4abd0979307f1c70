"""One look for every report figure: sizes that fit a paper column or page, a colour per
quantization library, PNG + PDF output, collapsed schemes, labels that do not overlap."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..io import atomic_path

# inches: one column of a two-column paper, and the full text width
COLUMN, PAGE = 3.4, 7.0
RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "legend.fontsize": 7, "figure.titlesize": 9,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "grid.linewidth": 0.5, "savefig.bbox": "tight", "savefig.dpi": 200,
    "pdf.fonttype": 42,  # TrueType in the PDF: editable text in a paper's figure
    "svg.fonttype": "none",  # SVG text stays text: small, and searchable in the HTML report
    "svg.hashsalt": "whisper-ptq",  # fixed element ids: same numbers, same SVG
}
# WER above this multiple of the fp32 WER of the same model/device/split is a collapsed
# scheme (e.g. 2-bit): drawn as a marker at the axis edge with its value, never setting
# the axis range
COLLAPSE = 4.0
CI_TEXT = "95 % speaker-bootstrap CI"

LIBRARY_COLOURS = {
    "fp": "#404040", "torch": "#1f77b4", "quanto": "#ff7f0e", "hqq": "#2ca02c",
    "bnb": "#d62728", "ct2": "#9467bd", "torchao": "#8c564b", "whispercpp": "#e6ab02",
    "ort": "#e7298a",  # not a second brown beside torchao
    "openvino": "#1b9e77",
}
# libraries the mapping does not know yet get one of these, fixed by their name
FALLBACK = ["#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a"]


def library_colour(library) -> str:
    if library in LIBRARY_COLOURS:
        return LIBRARY_COLOURS[library]
    digest = hashlib.sha256(str(library).encode()).digest()
    return FALLBACK[digest[0] % len(FALLBACK)]


def plt():
    import logging

    import matplotlib

    # PDF font subsetting logs every glyph at INFO (the CLI logs INFO)
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    pyplot.rcParams.update(RC)
    return pyplot


def save(fig, png, pdf=None, svg=False) -> list[Path]:
    """Writes ``png`` and ``pdf`` (default: beside it, same stem), with ``svg`` an SVG beside
    the PNG too; returns the paths."""
    png = Path(png)
    paths = [png, Path(pdf) if pdf else png.with_suffix(".pdf")] + [png.with_suffix(".svg")] * svg
    for path in paths:
        with atomic_path(path) as tmp:
            # no creation date: a redraw of the same numbers gives the same bytes
            stamp = {".pdf": {"CreationDate": None}, ".svg": {"Date": None}}.get(path.suffix)
            fig.savefig(tmp, format=path.suffix[1:], metadata=stamp)
            if path.suffix == ".svg":  # scale to the page that inlines it (viewBox kept)
                text = tmp.read_text()
                head = text.index("<svg")
                end = text.index(">", head)
                tag = re.sub(r'\s(width|height)="[^"]*"', "", text[head:end])
                tmp.write_text(text[:head] + tag.replace("<svg", '<svg width="100%"', 1)
                               + text[end:])
    return paths


def library_legend(ax, libraries, **kw):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=library_colour(lib), label=lib)
               for lib in dict.fromkeys(libraries)]
    return ax.legend(handles=handles, title="library", **kw)


def _overlaps(bbox, others, pad=1.0):
    return any(bbox.x0 - pad < o.x1 and o.x0 - pad < bbox.x1 and bbox.y0 - pad < o.y1
               and o.y0 - pad < bbox.y1 for o in others)


# offsets (points) tried in turn around a marker, nearest first
_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3, 4.5, 6)
            for dx, dy in ((4, 3), (4, -7), (-4, 3), (-4, -7), (0, 5), (0, -10), (6, -2),
                           (-6, -2))]


def label_box(text, renderer):
    """The rendered box of a label's text alone (an annotation's own box includes its leader
    line)."""
    from matplotlib.text import Text

    if hasattr(text, "update_positions"):  # an annotation: place the text at its offset first
        text.update_positions(renderer)
    return Text.get_window_extent(text, renderer)


def place_labels(ax, items, fontsize=7):
    """Annotates ``items`` [(x, y, text, colour)] so that no two labels (and no label and a
    marker) overlap where a free spot exists: each label takes the first offset around its
    point whose rendered box is free; one placed away from its point gets a thin leader
    line. Returns the annotations."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    taken = []
    for x, y, _, _ in items:  # the markers themselves
        px, py = ax.transData.transform((x, y))
        taken.append(Bbox([[px - 3, py - 3], [px + 3, py + 3]]))
    out = []
    axbox = ax.get_window_extent(renderer)
    for x, y, text, colour in items:
        ann = None
        for i, (dx, dy) in enumerate(_OFFSETS):
            if ann is not None:
                ann.remove()
            far = i >= 8  # past the first ring of offsets
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                              fontsize=fontsize, color=colour,
                              ha="left" if dx >= 0 else "right", va="bottom",
                              annotation_clip=False,
                              arrowprops=dict(arrowstyle="-", lw=0.4, color=colour, shrinkA=1,
                                              shrinkB=3) if far else None)
            bb = label_box(ann, renderer)
            inside = axbox.x0 <= bb.x0 and bb.x1 <= axbox.x1 and axbox.y0 <= bb.y0 and bb.y1 <= axbox.y1
            if inside and not _overlaps(bb, taken):
                break
        taken.append(label_box(ann, renderer))
        out.append(ann)
    return out
