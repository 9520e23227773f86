"""The search report: one self-contained HTML file showing each query image beside its k
results, nearest first, with their Hamming distances, labels and (where labels exist)
whether each shares a label with the query, plus the query's average precision.

Self-contained: thumbnails are embedded as data:image/png;base64 URIs (`png`), the style is
inline, there is no script, and a Content-Security-Policy forbids loading anything else,
so the file opens offline, from an e-mail or an artefact store, in any browser. The file is
plain ASCII (other characters become character references), written atomically.

Every result is one `<td class="result">` cell with data-id, data-distance, data-rank and,
where known, data-relevant ("true" / "false"); every query image is `<img class="query">`,
every result thumbnail `<img class="thumbnail">`. Images no larger than their box (8 px
digits) are scaled up with hard pixel edges; images larger than MAX_EMBEDDED_SIDE are
averaged down before embedding, so the file stays small for photos of any size.
"""
import dataclasses
import html
import logging
import math
import operator
import os
from collections.abc import Mapping, Sequence

import numpy as np

from nac_tf.run_directory import write_text
from nac_tf.search.png import image_pixels, png_data_uri

logger = logging.getLogger(__name__)

# Sides of the boxes thumbnails are shown in, in CSS pixels.
THUMBNAIL_CSS_PX = 64
QUERY_CSS_PX = 96
# Longest side of an embedded image, in pixels: larger images are block-averaged down.
MAX_EMBEDDED_SIDE = 128

# Relevance marks: a border colour and a text mark, so they do not rely on colour alone.
_MARKS = {True: ("relevant", "&#10003; relevant"),
          False: ("not-relevant", "&#10007; not relevant")}


@dataclasses.dataclass
class ReportResult:
    """One result of a query, in rank order."""
    id: int                      # the item's id in the index
    distance: int                # Hamming distance to the query
    image: np.ndarray | None     # uint8 [H, W, 3] (or [H, W] grey), None: no thumbnail
    label: str | None = None     # the item's label(s) as text
    relevant: bool | None = None  # shares a label with the query; None: no labels
    path: str | None = None      # file path of the item, if it came from a file


@dataclasses.dataclass
class ReportQuery:
    """One query with its results."""
    name: str                    # e.g. "query 3" or the file name
    image: np.ndarray | None
    results: list[ReportResult]
    label: str | None = None
    average_precision: float | None = None  # AP@all of exact Hamming ranking; None: no labels


_STYLE = f"""
body {{ font-family: sans-serif; margin: 1em; color: #222; background: #fff; }}
h1 {{ font-size: 1.4em; margin: 0 0 .5em; }}
table.details {{ border-collapse: collapse; margin-bottom: .8em; font-size: 14px; }}
table.details th, table.details td {{ text-align: left; padding: 2px 10px 2px 0;
  border-bottom: 1px solid #ddd; }}
p.legend {{ font-size: 13px; color: #555; }}
table.results {{ border-collapse: separate; border-spacing: 4px; }}
th.query-cell, td.result {{ vertical-align: top; text-align: center; font-size: 12px;
  font-weight: normal; padding: 4px; border: 3px solid #ccc; min-width: {THUMBNAIL_CSS_PX}px;
  overflow-wrap: anywhere; }}
th.query-cell {{ border-color: #333; background: #f4f4f4; max-width: {QUERY_CSS_PX + 40}px; }}
td.result {{ max-width: {THUMBNAIL_CSS_PX + 24}px; }}
td.relevant {{ border-color: #1a7f37; }}
td.not-relevant {{ border-color: #cf222e; border-style: dashed; }}
.mark {{ font-weight: bold; }}
td.relevant .mark {{ color: #1a7f37; }}
td.not-relevant .mark {{ color: #cf222e; }}
.name {{ font-weight: bold; }}
img.thumbnail, .no-image.thumbnail {{ width: {THUMBNAIL_CSS_PX}px;
  height: {THUMBNAIL_CSS_PX}px; }}
img.query, .no-image.query {{ width: {QUERY_CSS_PX}px; height: {QUERY_CSS_PX}px; }}
img {{ object-fit: contain; display: block; margin: 0 auto 2px; }}
img.pixelated {{ image-rendering: pixelated; }}
.no-image {{ margin: 0 auto 2px; background: #eee; color: #777; display: flex;
  align-items: center; justify-content: center; }}
"""

# Nothing but the inline style and data: images may load (the file makes no requests).
_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _text(value):
    return html.escape(str(value), quote=True)


def _integer(value, name):
    """`value` as an int (a NumPy integer too), or ValueError naming `name`."""
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: must be an integer; received {value!r}.") from None


def _embedded(pixels):
    """`pixels` [H, W, C], block-averaged down by one integer factor so that no side exceeds
    MAX_EMBEDDED_SIDE (the few rows and columns past a whole block are dropped)."""
    factor = math.ceil(max(pixels.shape[:2]) / MAX_EMBEDDED_SIDE)
    if factor <= 1:
        return pixels
    rows, cols = min(factor, pixels.shape[0]), min(factor, pixels.shape[1])
    height, width = pixels.shape[0] // rows, pixels.shape[1] // cols
    blocks = pixels[:height * rows, :width * cols].reshape(
        height, rows, width, cols, pixels.shape[2])
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _image_html(image, css_class, box_px, alt, name):
    """An <img> of `image` (a data URI) in a `box_px` box, or a placeholder when None."""
    if image is None:
        return f'<div class="no-image {css_class}">no image</div>'
    pixels = _embedded(image_pixels(image, name))
    if max(pixels.shape[:2]) < box_px:
        css_class += " pixelated"
    return (f'<img class="{css_class}" src="{png_data_uri(pixels, name)}" '
            f'alt="{_text(alt)}" width="{box_px}" height="{box_px}">')


def _result_html(rank, result, name):
    item = _integer(result.id, f"{name}.id")
    distance = _integer(result.distance, f"{name}.distance")
    classes = "result"
    attributes = f'data-id="{item}" data-distance="{distance}" data-rank="{rank}"'
    mark = ""
    if result.relevant is not None:
        relevant = bool(result.relevant)
        mark_class, mark_text = _MARKS[relevant]
        classes += f" {mark_class}"
        attributes += f' data-relevant="{str(relevant).lower()}"'
        mark = f'<div class="mark">{mark_text}</div>'
    parts = [f'<td class="{classes}" {attributes}>',
             _image_html(result.image, "thumbnail", THUMBNAIL_CSS_PX, f"id {item}",
                         f"{name}.image"),
             f'<div class="rank">#{rank} &middot; id {item}</div>',
             f'<div class="distance">distance {distance}</div>']
    if result.label is not None:
        parts.append(f'<div class="label">label {_text(result.label)}</div>')
    parts.append(mark)
    if result.path is not None:
        parts.append(f'<div class="path" title="{_text(result.path)}">'
                     f'{_text(os.path.basename(result.path) or result.path)}</div>')
    parts.append("</td>")
    return "".join(parts)


def _query_html(index, query):
    name = f"queries[{index}]"
    if not isinstance(query, ReportQuery):
        raise ValueError(f"{name}: must be a ReportQuery; received {type(query).__name__}.")
    if not isinstance(query.results, Sequence):
        raise ValueError(f"{name}.results: must be a list of ReportResult; received "
                         f"{type(query.results).__name__}.")
    parts = ['<tr class="query-row">', '<th class="query-cell" scope="row">',
             _image_html(query.image, "query", QUERY_CSS_PX, query.name, f"{name}.image"),
             f'<div class="name">{_text(query.name)}</div>']
    if query.label is not None:
        parts.append(f'<div class="label">label {_text(query.label)}</div>')
    if query.average_precision is not None:
        parts.append(f'<div class="ap">AP@all {float(query.average_precision):.3f}</div>')
    judged = [r.relevant for r in query.results
              if isinstance(r, ReportResult) and r.relevant is not None]
    if judged:
        parts.append(f'<div class="hits">{sum(map(bool, judged))} / {len(judged)} '
                     "relevant</div>")
    parts.append("</th>")
    for rank, result in enumerate(query.results, 1):
        if not isinstance(result, ReportResult):
            raise ValueError(f"{name}.results[{rank - 1}]: must be a ReportResult; received "
                             f"{type(result).__name__}.")
        parts.append(_result_html(rank, result, f"{name}.results[{rank - 1}]"))
    parts.append("</tr>")
    return "\n".join(parts)


def _details_html(details):
    if details is None:
        return ""
    if not isinstance(details, Mapping):
        raise ValueError(f"details: must be a dict of facts; received {type(details).__name__}.")
    rows = "".join(f'<tr><th scope="row">{_text(key)}</th><td>{_text(value)}</td></tr>'
                   for key, value in details.items())
    return f'<table class="details">{rows}</table>'


def render_search_report(queries, title, details=None):
    """The report's HTML text (ASCII); see `write_search_report`."""
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
        raise ValueError(f"queries: must be a list of ReportQuery; received "
                         f"{type(queries).__name__}.")
    rows = "\n".join(_query_html(i, query) for i, query in enumerate(queries))
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_SECURITY_POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>{_text(title)}</h1>
{_details_html(details)}
<p class="legend">Each row is one query (left) and its nearest items by Hamming distance
between hash codes, nearest first. Where labels are known, a result that shares a label
with the query has a solid green border and &#10003;, one that does not a dashed red border
and &#10007;; AP@all is the query's average precision over the exact Hamming ranking of the
whole index.</p>
</header>
<main>
<table class="results">
<tbody>
{rows}
</tbody>
</table>
</main>
</body>
</html>
"""
    # Plain ASCII: the file reads the same whatever encoding a viewer assumes.
    return document.encode("ascii", "xmlcharrefreplace").decode("ascii")


def write_search_report(path, queries, title, details=None):
    """Writes one self-contained HTML file (thumbnails embedded as data:image/png;base64
    URIs, inline CSS, no script, no network) and returns its path. `details`: a dict of
    facts shown as a small table at the top (index, model, k, code bits, ...).

    The whole page is built before anything is written, and written atomically (a temporary
    file renamed over `path`): a bad input or a crash never leaves a partial report.
    Missing parent directories are created. Bad inputs raise ValueError naming the
    parameter (`queries[2].results[0].image: ...`)."""
    document = render_search_report(queries, title, details)
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    write_text(path, document)
    logger.info("Wrote the search report of %d queries to %s", len(queries), path)
    return path
