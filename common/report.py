"""One self-contained HTML review page per inference run, ``report.html`` in ``output_dir``: the bundle and the run's
settings, every case with its measurements, quality signals and review flag (flagged cases first, sortable by any
column), an overlay picture per case (click for a larger view), and the cases that failed. The page needs no server
and no network: the style and the script are inline, the pictures are ``data:`` URIs."""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from common.bundle_archive import file_hash
from common.distributed import gather, is_main
from common.handlers import case_items, published_rows, source_of
from common.tables import _write_atomic

logger = logging.getLogger(__name__)

#: row keys the page shows in columns of their own, not among the measurements
_OWN_COLUMNS = ("case", "file", "review", "review_reasons")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d1d1f; }
h1 { margin: 0 0 .3em; font-size: 1.5em; } h1 small { color: #666; font-weight: normal; }
dl.settings { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; margin: .5em 0 1em; }
dl.settings dt { font-weight: 600; } dl.settings dd { margin: 0; font-family: monospace; word-break: break-all; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: middle; }
th { background: #f0f0f3; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.flagged { background: #fff1ee; } tr.flagged td.flag { color: #b3261e; font-weight: 700; }
td.reasons { min-width: 16em; max-width: 30em; }
img.thumb { height: 96px; cursor: zoom-in; display: block; }
#lightbox { position: fixed; inset: 0; background: rgba(0, 0, 0, .85); display: flex; align-items: center;
  justify-content: center; cursor: zoom-out; }
#lightbox[hidden] { display: none; }
#lightbox img { width: 92vw; height: 88vh; object-fit: contain; }
#lightbox p { position: absolute; bottom: .5em; color: #fff; }
"""

_SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-value");
    if (v === null) { v = cell.textContent.trim(); }
    return v === "" ? null : (isNaN(Number(v)) ? v.toLowerCase() : Number(v));
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, column) {
      th.addEventListener("click", function () {
        var up = th.getAttribute("aria-sort") !== "ascending";
        table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[column]), y = key(b.cells[column]);
          if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
          var order = (typeof x === typeof y) ? (x < y ? -1 : (x > y ? 1 : 0)) : (typeof x === "number" ? -1 : 1);
          return up ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  var box = document.createElement("div"), big = document.createElement("img"), caption = document.createElement("p");
  box.id = "lightbox"; box.hidden = true; box.appendChild(big); box.appendChild(caption);
  document.body.appendChild(box);
  document.querySelectorAll("img.thumb").forEach(function (img) {
    img.addEventListener("click", function () {
      big.src = img.src; big.alt = img.alt; caption.textContent = img.alt; box.hidden = false;
    });
  });
  function close() { box.hidden = true; big.removeAttribute("src"); }
  box.addEventListener("click", close);
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") { close(); } });
})();
"""


def _text(value: Any) -> str:
    """A table value as the page shows it: three decimals at most, nothing for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _cell(value: Any) -> str:
    """One ``<td>`` of a measurement, with its raw number in ``data-value`` for sorting."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = "" if isinstance(value, float) and not math.isfinite(value) else repr(value)
        return f'<td class="number" data-value="{html.escape(number)}">{html.escape(_text(value))}</td>'
    return f"<td>{html.escape(_text(value))}</td>"


def measurement_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns of the case table after the case, flag, reasons and picture: every scalar column of the rows, in
    the order they first appear (lists of lesions and the like stay in the JSON files)."""
    columns: list[str] = []
    for row in rows:
        columns += [
            k for k, v in row.items() if k not in columns and k not in _OWN_COLUMNS and not isinstance(v, (list, dict))
        ]
    return columns


def render_page(
    title: str,
    version: str,
    settings: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    pictures: Mapping[str, bytes | None],
    failures: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The review page as one HTML string: ``rows`` (one per case, with ``case``, ``file`` and the review columns),
    flagged cases first; ``pictures`` maps a row's ``file`` to its PNG bytes (a case without one says so);
    ``failures`` are the entries of ``failed_cases.json``."""
    ordered = sorted(rows, key=lambda row: not row.get("review", False))  # stable: file order within each group
    columns = measurement_columns(ordered)
    flagged = sum(bool(row.get("review")) for row in ordered)
    header = "".join(f"<th>{html.escape(c)}</th>" for c in ("case", "review", "reasons", "overlay", *columns))
    body = []
    for row in ordered:
        case = str(row.get("case", ""))
        picture = pictures.get(str(row.get("file", "")))
        image = (
            f'<img class="thumb" src="data:image/png;base64,{base64.b64encode(picture).decode("ascii")}" '
            f'alt="{html.escape(case)}">'
            if picture
            else "no picture"
        )
        flag = bool(row.get("review"))
        cells = [
            f'<td title="{html.escape(str(row.get("file", "")))}">{html.escape(case)}</td>',
            f'<td class="flag" data-value="{int(flag)}">{"check" if flag else "ok"}</td>',
            f'<td class="reasons">{html.escape(str(row.get("review_reasons", "") or ""))}</td>',
            f"<td>{image}</td>",
            *(_cell(row.get(c)) for c in columns),
        ]
        body.append(f'<tr class="{"flagged" if flag else "ok"}">{"".join(cells)}</tr>')
    failed = "".join(
        f'<tr class="failed"><td>{html.escape(str(f.get("image", "")))}</td>'
        f"<td>{html.escape(str(f.get('error', '')))}</td></tr>"
        for f in failures
    )
    details = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in settings.items())
    summary = (
        f"{len(ordered)} case(s) segmented, <strong>{flagged} flagged for review</strong>, "
        f"{len(failures)} failed (not segmented)."
    )
    failed_part = (
        f'<h2>Failed cases</h2><table id="failed" class="sortable"><thead><tr><th>image</th><th>error</th></tr></thead>'
        f"<tbody>{failed}</tbody></table>"
        if failures
        else "<h2>Failed cases</h2><p>None.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Review: {html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{html.escape(title)} <small>version {html.escape(version)}</small></h1>"
        f'<dl class="settings">{details}</dl><p class="summary">{summary}</p></header>'
        "<h2>Cases</h2><p>Flagged cases first; click a column header to sort, a picture to enlarge it.</p>"
        f'<table id="cases" class="sortable"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        f"{failed_part}<script>{_SCRIPT}</script></body></html>\n"
    )


def bundle_identity(bundle_root: str | Path) -> tuple[str, str]:
    """Name and version of a bundle from its ``configs/metadata.json`` (the folder name and ``?`` without one)."""
    meta_file = Path(bundle_root) / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return str(meta.get("name") or Path(bundle_root).resolve().name), str(meta.get("version", "?"))


def weights_digest(ckpt_path: str | Path | None) -> str:
    """The first 12 hex digits of the weights' SHA-256, or why there are none."""
    if ckpt_path is None or not Path(ckpt_path).is_file():
        return "(no weights file)"
    return file_hash(ckpt_path)[:12]


class ReviewReport:
    """Write the run's review page, ``output_dir/report.html``, at the end of inference.

    On every iteration the picture of each case (PNG bytes under ``picture_key``, put there by
    ``common.overlay.Thumbnaild``) is kept; at the end the rows of the ``CaseTableWriter`` named ``table`` (attach
    this handler after it), the pictures and the failed cases of ``report_path`` are gathered from every process
    under ``torchrun`` and the first process writes the page, atomically.

    Args:
        output_dir: folder of the page.
        bundle_root: the bundle (its metadata gives the name and version on the page).
        table: name of the measurements table (``CaseTableWriter``'s ``name``).
        report_path: this process's list of failed cases (``failed_cases_path``).
        input_dir, ckpt_path, device: the run's settings, shown on the page (with the weights' SHA-256).
        picture_key: key of a case's PNG bytes.
        filename: the page's file name.
    """

    def __init__(
        self,
        output_dir: str,
        bundle_root: str,
        table: str = "measurements",
        report_path: str | None = None,
        input_dir: str | None = None,
        ckpt_path: str | None = None,
        device: Any = None,
        picture_key: str = "thumbnail",
        filename: str = "report.html",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.bundle_root = bundle_root
        self.table = table
        self.report_path = report_path
        self.settings = {"input_dir": input_dir, "output_dir": output_dir, "ckpt_path": ckpt_path, "device": device}
        self.picture_key = picture_key
        self.filename = filename
        self.pictures: dict[str, bytes | None] = {}

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``engine``."""
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.pictures = {}

    def _collect(self, engine: Engine) -> None:
        for item in case_items(engine):
            picture = item.get(self.picture_key)
            self.pictures[source_of(item)] = bytes(picture) if picture else None

    def _failures(self) -> list[dict[str, Any]]:
        """This process's failed cases so far."""
        path = Path(self.report_path) if self.report_path else None
        return json.loads(path.read_text()) if path is not None and path.is_file() else []

    def _write(self, engine: Engine) -> None:
        rows = published_rows(engine, self.table)
        pictures = {k: v for part in gather(self.pictures) for k, v in part.items()}
        failures = sorted((f for part in gather(self._failures()) for f in part), key=lambda f: str(f.get("image")))
        if not is_main():
            return
        name, version = bundle_identity(self.bundle_root)
        settings = {
            **{k: "" if v is None else str(v) for k, v in self.settings.items()},
            "weights sha256": weights_digest(self.settings["ckpt_path"]),
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        page = render_page(name, version, settings, rows, pictures, failures)
        path = self.output_dir / self.filename
        ascii_page = page.encode("ascii", "xmlcharrefreplace").decode("ascii")  # any locale
        _write_atomic(path, lambda f: f.write(ascii_page))
        flagged = sum(bool(row.get("review")) for row in rows)
        logger.info("wrote the review page %s: %d case(s), %d flagged", path, len(rows), flagged)
