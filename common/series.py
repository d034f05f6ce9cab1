"""Checks of a DICOM series folder before it is read as one volume: one series, every slice present and whole,
evenly spaced. ITK reads a folder with a missing slice at the wrong spacing (it takes the spacing of the first
two slices), reads one series of several and ignores the rest, with a warning on stderr at most; here each of
those is refused with the folder, the problem and the fix."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from common.data import is_dicom_file

#: a gap between neighbouring slices may differ from the median gap by this fraction
GAP_TOLERANCE = 0.2


def _pixel_bytes(ds: Any) -> int | None:
    """Bytes of uncompressed pixel data a slice header announces, or None when compressed or not stated."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        return None
    try:
        return int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
    except AttributeError:
        return None


def _read_slice(path: Path) -> Any:
    """The header of one slice, with its pixel data checked for length; ``ValueError`` naming the file if not."""
    try:
        ds = dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a readable DICOM file ({e}); remove it or copy the series again.") from e
    expected, data = _pixel_bytes(ds), ds.get("PixelData")
    if data is None or (expected is not None and len(data) < expected):
        got = 0 if data is None else len(data)
        raise ValueError(
            f"{path}: truncated, {got} of the {expected} bytes of pixel data; copy the series again."
            if expected
            else f"{path}: holds no pixel data; remove it from the series folder."
        )
    return ds


def check_series(folder: str | Path) -> None:
    """Refuse a DICOM series folder (``ValueError``) holding several series, a truncated or unreadable slice, or
    slices with a gap (a missing slice) or uneven spacing; pass a folder of one complete series."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))
    slices = [(path, _read_slice(path)) for path in files]
    series: dict[str, list[Path]] = {}
    names: dict[str, str] = {}
    for path, ds in slices:
        uid = str(ds.get("SeriesInstanceUID", ""))
        series.setdefault(uid, []).append(path)
        names.setdefault(uid, f"number {ds.get('SeriesNumber', '?')} '{ds.get('SeriesDescription', '')}'")
    if len(series) > 1:
        counts = ", ".join(f"{names[uid]}: {len(paths)} files" for uid, paths in series.items())
        raise ValueError(
            f"{folder}: holds {len(series)} DICOM series ({counts}); put each series in a folder of its own."
        )
    if len(slices) < 3:
        return
    try:
        rows = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in slices])
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in slices])
    except AttributeError:
        return  # no patient geometry (e.g. a secondary capture): nothing to measure the spacing with
    normal = np.cross(rows[0][:3], rows[0][3:])
    order = np.argsort(positions @ normal)
    location = (positions @ normal)[order]
    gaps = np.diff(location)
    step = float(np.median(gaps))
    if step <= 0:
        raise ValueError(f"{folder}: several slices share one position; remove the duplicates.")
    uneven = np.flatnonzero(np.abs(gaps - step) > GAP_TOLERANCE * step)
    if uneven.size:
        k = int(uneven[0])
        before, after = slices[order[k]][0].name, slices[order[k + 1]][0].name
        missing = int(round(gaps[k] / step)) - 1
        what = f"{missing} missing slice(s)" if missing >= 1 else "uneven slice spacing"
        raise ValueError(
            f"{folder}: {what}: {gaps[k]:.2f} mm between {before} and {after} where the series steps "
            f"{step:.2f} mm ({uneven.size} such gap(s)); copy the complete series again."
        )


class CheckDicomSeriesd(MapTransform):
    """Run ``check_series`` on every key whose value is a folder (a DICOM series); files pass unchecked."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], (str, Path)) and Path(d[key]).is_dir():
                check_series(d[key])
        return d
