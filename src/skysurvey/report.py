"""The run report: one self-contained HTML page (images embedded), readable offline.

It holds the run summary, a quality table with one row per image (sources, seeing, background,
zero point, depth, warnings), every figure ``plot_catalog.py`` drew (and a line for each it
skipped), and the named query results. :func:`render_html` is pure (data in, text out);
:func:`write_report` reads the catalog and writes the file.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .export import atomic_write

__all__ = ["QUALITY_COLUMNS", "QUALITY_DECIMALS", "count_pointings", "describe_images", "plural",
           "quality_table", "query_caption", "render_html", "run_summary", "write_report"]

QUALITY_COLUMNS = {  # column in the quality table: its header
    "image_id": "image", "band": "band", "night": "night", "n_sources": "sources",
    "seeing_arcsec": "seeing [arcsec]", "bkg_median": "background [ADU]",
    "bkg_rms": "background RMS [ADU]", "zero_point": "zero point [mag]",
    "zero_point_source": "zero point from", "depth_5sigma": "5-sigma depth [mag]",
    "seconds": "seconds", "warnings": "warnings",
}

#: Decimals shown per quality column: what the measurement supports (seeing to 0.01",
#: zero points to a millimagnitude), not the 6-9 digits of a float.
QUALITY_DECIMALS = {"seeing_arcsec": 2, "bkg_median": 1, "bkg_rms": 2, "zero_point": 3,
                    "depth_5sigma": 2, "seconds": 2}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: .5em; vertical-align: top; }
figure img { max-width: 520px; border: 1px solid #eee; } figcaption { font-size: .85em; }
.skipped { color: #666; font-style: italic; }
"""


def quality_table(images: pd.DataFrame) -> pd.DataFrame:
    """One row per image: the columns of :data:`QUALITY_COLUMNS` that the catalog has.

    Seeing is ``fwhm_arcsec`` when measured, else ``fwhm_median`` x ``pixel_scale``.

    Parameters
    ----------
    images : pandas.DataFrame
        The catalog's ``images`` table.

    Returns
    -------
    pandas.DataFrame
        One row per image, seeing in arcsec.
    """
    df = images.copy()
    seeing = df["fwhm_arcsec"] if "fwhm_arcsec" in df else pd.Series(np.nan, index=df.index)
    if {"fwhm_median", "pixel_scale"} <= set(df.columns):
        seeing = seeing.fillna(df["fwhm_median"] * df["pixel_scale"])
    df["seeing_arcsec"] = seeing
    columns = [c for c in QUALITY_COLUMNS if c in df.columns]
    out = df[columns].sort_values([c for c in ("band", "night", "image_id") if c in columns])
    return out.reset_index(drop=True).round(
        {c: d for c, d in QUALITY_DECIMALS.items() if c in columns})


def run_summary(sources: pd.DataFrame, images: pd.DataFrame, catalog_uri: str) -> dict:
    """Headline numbers of the catalog: images, sources, bands, nights, time, versions."""
    def values(df, column):
        return sorted(str(v) for v in df[column].dropna().unique()) if column in df else []

    return {
        "catalog": str(catalog_uri),
        "images": len(images),
        "sources": len(sources),
        "bands": ", ".join(values(images, "band")) or "-",
        "nights": ", ".join(values(images, "night")) or "-",
        "images with warnings": int(images["warnings"].notna().sum())
        if "warnings" in images else 0,
        "processing time (sum over images)": f"{images['seconds'].sum():.2f} s"
        if "seconds" in images else "-",
        "pipeline versions": ", ".join(values(images, "pipeline_version")) or "-",
        "report written": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        + f" by skysurvey {__version__}",
    }


def count_pointings(images: pd.DataFrame, tolerance: float = 0.05) -> int:
    """How many distinct pointings the images were taken at: image centres closer than
    *tolerance* x the field's width (``width`` x ``pixel_scale``) count as one pointing."""
    cols = {"ra_center", "dec_center"}
    if images.empty or not cols <= set(images.columns):
        return 0
    rows = images.dropna(subset=list(cols))
    centres: list[tuple[float, float, float]] = []
    for row in rows.to_dict("records"):
        scale = row.get("pixel_scale") or np.nan
        width = (row.get("width") or 0) * scale / 3600 if np.isfinite(scale) else 0.0
        ra, dec = float(row["ra_center"]), float(row["dec_center"])
        for ra0, dec0, w in centres:
            dra = ((ra - ra0 + 180) % 360 - 180) * np.cos(np.radians(dec0))
            if np.hypot(dra, dec - dec0) <= tolerance * max(w, width, 1e-6):
                break
        else:
            centres.append((ra, dec, width))
    return len(centres)


def describe_images(images: pd.DataFrame) -> dict:
    """What a run's images are, computed from the ``images`` table: how many, the bands and
    nights, the pointings, and the sources per image (min, median, max, total)."""
    def values(column):
        return sorted(str(v) for v in images[column].dropna().unique()) if column in images \
            else []

    n = images["n_sources"].dropna() if "n_sources" in images else pd.Series(dtype=float)
    return {"images": len(images), "bands": values("band"), "nights": values("night"),
            "pointings": count_pointings(images),
            "sources": int(n.sum()) if len(n) else 0,
            "sources_min": int(n.min()) if len(n) else 0,
            "sources_median": round(float(n.median())) if len(n) else 0,
            "sources_max": int(n.max()) if len(n) else 0}


def plural(n: int, word: str) -> str:
    """``1 night``, ``2 nights``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _table_html(df: pd.DataFrame, headers: Mapping[str, str] | None = None,
                decimals: Mapping[str, int] | None = None) -> str:
    """*df* as an HTML table; *decimals* fixes the digits of some columns (others: _number)."""
    headers = dict(headers or {})
    formatters = {headers.get(c, c): _fixed(d) for c, d in (decimals or {}).items()
                  if c in df.columns}
    shown = df.rename(columns=headers)
    return shown.to_html(index=False, na_rep="-", float_format=_number, border=0, escape=True,
                         formatters=formatters)


def _fixed(digits: int):
    return lambda v: "-" if v is None or pd.isna(v) else f"{v:.{digits}f}"


def query_caption(description: str, values: Sequence = ()) -> str:
    """The query's description with its ``?`` replaced by the values bound to them
    (``SNR >= ?`` -> ``SNR >= 5``); values without a ``?`` of their own are listed after it."""
    words = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    parts = description.split("?")
    text = parts[0]
    for k, rest in enumerate(parts[1:]):
        text += (words[k] if k < len(words) else "?") + rest
    extra = words[len(parts) - 1:]
    return text + (f" (bound values: {', '.join(extra)})" if extra else "")


def _number(value: float) -> str:
    """Up to 6 decimals, trailing zeros dropped: RA/Dec keep their digits (150.123457), small
    numbers stay readable (0.0035), no exponent for MJD (61114.158333)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def render_html(summary: Mapping[str, object], quality: pd.DataFrame,
                figures: Mapping[str, bytes], query_results: Mapping[str, pd.DataFrame], *,
                skipped: Sequence[str] = (), query_descriptions: Mapping[str, str] | None = None,
                empty_reasons: Mapping[str, str] | None = None,
                title: str = "Sky survey run report") -> str:
    """The report page; *figures* maps names to PNG bytes (embedded as base64); an empty
    query result shows its *empty_reasons* entry (a step not run yet...) when there is one."""
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{esc(title)}</h1>", "<h2>Run summary</h2><table>"]
    parts += [f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>"
              for k, v in summary.items()]
    parts.append("</table><h2>Image quality</h2>")
    if quality.empty:
        parts.append("<p>No image record in the catalog.</p>")
    else:
        parts.append(_table_html(quality, QUALITY_COLUMNS, QUALITY_DECIMALS))
    parts.append("<h2>Figures</h2>")
    for name, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img alt=\"{esc(name)}\" src=\"data:image/png;base64,{data}\">"
                     f"<figcaption>{esc(name)}</figcaption></figure>")
    if not figures:
        parts.append("<p>No figure.</p>")
    parts += [f"<p class=\"skipped\">skipped {esc(line)}</p>" for line in skipped]
    parts.append("<h2>Named queries</h2>")
    for name, df in query_results.items():
        about = (query_descriptions or {}).get(name, "")
        parts.append(f"<h3>{esc(name)}</h3>" + (f"<p>{esc(about)}</p>" if about else ""))
        reason = (empty_reasons or {}).get(name)
        parts.append(_table_html(df) if len(df) else
                     f"<p>(no rows){': ' + esc(reason) if reason else ''}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(path: str | os.PathLike, catalog_uri: str, *,
                 png_paths: Sequence[str | os.PathLike] = (), skipped: Sequence[str] = (),
                 sources: pd.DataFrame | None = None) -> Path:
    """Read the catalog (images table, named queries on DuckDB) and write the report.

    Parameters
    ----------
    path : str or os.PathLike
        The HTML file to write (replaced atomically).
    catalog_uri : str
        The catalog (local folder or ``s3://``).
    png_paths : sequence of path, optional
        Figures to embed.
    skipped : sequence of str, optional
        One line per figure that was not drawn, and why.
    sources : pandas.DataFrame, optional
        The sources table when already read; None: read from the catalog.

    Returns
    -------
    Path
        The file written.
    """
    from .plots import read_catalog
    from .queries import NAMED_QUERIES, connect, run_named, why_empty

    sources = read_catalog(catalog_uri) if sources is None else sources
    images = read_catalog(catalog_uri, "images")
    con = connect(catalog_uri)  # one listing of the catalog for every named query
    try:
        results = {name: run_named(name, catalog_uri, con=con) for name in NAMED_QUERIES}
    finally:
        con.close()
    empty = {name: why_empty(NAMED_QUERIES[name].sql, catalog_uri)
             for name, df in results.items() if not len(df)}
    figures = {Path(p).stem: Path(p).read_bytes() for p in png_paths}
    text = render_html(run_summary(sources, images, catalog_uri), quality_table(images),
                       figures, results, skipped=skipped,
                       query_descriptions={n: query_caption(q.description, q.params)
                                           for n, q in NAMED_QUERIES.items()},
                       empty_reasons=empty)
    return atomic_write(Path(path), text.encode("utf-8"))
