"""Atomic writing of the JSON and CSV files a run leaves behind, and per-case summaries."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: file endings that belong to the image format rather than to the case name
_DOUBLE_SUFFIXES = (".nii.gz", ".nrrd.gz", ".tar.gz")


def case_stem(path: str | os.PathLike) -> str:
    """File name of ``path`` without its image extension (``case.nii.gz`` -> ``case``)."""
    name = Path(path).name
    for suffix in _DOUBLE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _write_atomic(path: str | os.PathLike, write: Any, newline: str | None = None) -> None:
    """Write a text file through a temporary file in the same folder and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline=newline) as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _plain(value: Any) -> Any:
    """Convert numpy/torch scalars to Python numbers, NaN to None, for JSON."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (NaN becomes null)."""

    def default(o: Any) -> Any:
        return _plain(o) if hasattr(o, "item") else str(o)

    def clean(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return _plain(o)

    _write_atomic(path, lambda f: json.dump(clean(obj), f, indent=2, default=default))


def write_csv_atomic(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (dictionaries) as a CSV with the union of their keys as header, atomically.

    Columns holding lists or dicts (e.g. a case's list of lesions) are left out: they belong in JSON files.
    """
    header: list[str] = []
    for row in rows:
        header += [k for k, v in row.items() if k not in header and not isinstance(v, (list, tuple, dict))]

    def write(f: Any) -> None:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: _plain(v) for k, v in row.items()} for row in rows])

    _write_atomic(path, write, newline="")


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation, median, min, max and count (ignoring NaN) of every numeric column."""
    summary: dict[str, dict[str, float]] = {}
    columns = {
        k for row in rows for k, v in row.items() if isinstance(_plain(v), (int, float)) and not isinstance(v, bool)
    }
    for column in sorted(columns):
        values = np.array([_plain(r[column]) for r in rows if _plain(r.get(column)) is not None], dtype=float)
        if values.size == 0:
            continue
        summary[column] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "median": float(np.median(values)),
            "min": float(values.min()),
            "max": float(values.max()),
            "count": int(values.size),
        }
    return summary
