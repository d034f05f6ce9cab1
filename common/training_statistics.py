"""What a bundle's training data looked like, recorded beside its weights, so that inference can say when a case is
unlike anything the network was trained on.

At the start of training, ``write_training_statistics`` reads (up to ``max_cases`` of) the training cases through
the validation preprocessing, i.e. as the network sees them, and writes ``training_statistics.json`` next to the
model: per case, the input's voxel spacing from the finest to the coarsest axis (from its original affine, so of
the scan as stored) and the 5th, 50th and 95th intensity percentiles of every channel after the bundle's
normalisation; and the bundle's inference measurements (volumes, counts, diameters...) of the training labels. The
file holds the smallest and largest value of each.

At inference, ``common.review.ReviewRow`` computes the same input statistics of each case's network input
(``input_statistics``) and compares them with the recorded ranges (``TrainingStatistics.input_reasons``): an input
spacing more than ``spacing_factor`` times finer or coarser than every training image's, or an intensity percentile
further than ``intensity_tolerance`` times the training images' typical 5-95 % spread outside the training range,
become review reasons; and a bundle's documented measurement ranges are widened to take in the training labels'
(``TrainingStatistics.measurement_range``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import convert_to_tensor

from common.distributed import is_main
from common.tables import write_json_atomic

logger = logging.getLogger(__name__)

PERCENTILES = (5.0, 50.0, 95.0)
#: how a reason names each entry of a sorted spacing, by the number of spatial dimensions
_AXES = {2: ("finer", "coarser"), 3: ("finest", "middle", "coarsest")}
#: at most this many values per channel enter the intensity percentiles (a strided sample of larger images)
_MAX_VALUES = 2_000_000
FILENAME = "training_statistics.json"


def sorted_spacing(affine: Any, spatial_dims: int) -> list[float]:
    """Voxel spacing (mm) from the finest to the coarsest axis: the same for a scan in any voxel order or
    orientation, oblique ones (a cardiac short-axis stack) included."""
    matrix = np.asarray(affine, dtype=np.float64)[:spatial_dims, :spatial_dims]
    return sorted(float(v) for v in np.linalg.norm(matrix, axis=0))


def input_statistics(image: torch.Tensor) -> dict[str, Any]:
    """A channel-first image's voxel spacing, finest first (from ``original_affine``, else its affine; 1.0 each
    without metadata), and its intensity percentiles (``PERCENTILES``) per channel."""
    values = convert_to_tensor(image, track_meta=False)
    spatial_dims = values.ndim - 1
    affine = None
    if isinstance(image, MetaTensor):
        affine = image.meta.get("original_affine", image.affine)
    spacing = [1.0] * spatial_dims if affine is None else sorted_spacing(affine, spatial_dims)
    percentiles = []
    for channel in values.detach().reshape(values.shape[0], -1).cpu().float().numpy():
        step = max(1, channel.size // _MAX_VALUES)
        percentiles.append([float(v) for v in np.percentile(channel[::step], PERCENTILES)])
    return {"spacing_mm": spacing, "intensity_percentiles": percentiles}


def _finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _span(values: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Element-wise minimum and maximum of equally long rows, ignoring NaN."""
    array = np.asarray(values, dtype=np.float64)
    return np.nanmin(array, axis=0).tolist(), np.nanmax(array, axis=0).tolist()


def summarise(inputs: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The recorded ranges of per-case ``input_statistics`` and measurement rows: smallest and largest spacing per
    axis and percentile per channel, the median 5-95 % spread per channel, and each numeric column's range."""
    if not inputs:
        raise ValueError("training statistics need at least one case")
    spacing_low, spacing_high = _span([s["spacing_mm"] for s in inputs])
    percentiles = np.asarray([s["intensity_percentiles"] for s in inputs], dtype=np.float64)  # cases x C x P
    measurements: dict[str, list[float]] = {}
    for row in rows:
        for column, value in row.items():
            if _finite_number(value):
                low, high = measurements.get(column, [math.inf, -math.inf])
                measurements[column] = [min(low, float(value)), max(high, float(value))]
    return {
        "cases": len(inputs),
        "spacing_mm": {"low": spacing_low, "high": spacing_high},
        "intensity": {
            "percentiles": list(PERCENTILES),
            "low": percentiles.min(axis=0).tolist(),
            "high": percentiles.max(axis=0).tolist(),
            "spread": np.median(percentiles[:, :, -1] - percentiles[:, :, 0], axis=0).tolist(),
        },
        "measurements": measurements,
    }


def _picks(count: int, limit: int) -> list[int]:
    """``limit`` indices spread evenly over ``range(count)`` (all of them when there are fewer)."""
    if count <= limit:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, limit).round()})


def write_training_statistics(
    datalist: Sequence[Mapping[str, Any]],
    transform: Callable[[dict[str, Any]], dict[str, Any]],
    row_fn: Callable[[dict[str, Any]], Mapping[str, Any]],
    output_path: str | os.PathLike,
    max_cases: int = 32,
    image_key: str = "image",
    label_key: str = "label",
) -> dict[str, Any] | None:
    """Record the training data's ranges (``summarise``) in ``output_path``, written atomically, and return them.

    Reads up to ``max_cases`` entries of ``datalist`` (spread over it) through ``transform`` (the validation
    preprocessing: the images as the network sees them); the measurements are the bundle's inference ``row_fn``
    applied to each case with its label as the prediction. Only rank 0 of a distributed run writes (the others
    return None).
    """
    if not is_main():
        return None
    inputs, rows = [], []
    for index in _picks(len(datalist), max_cases):
        item = transform(dict(datalist[index]))
        if isinstance(item, list):  # a transform that samples several crops: the first one
            item = item[0]
        inputs.append(input_statistics(item[image_key]))
        if label_key in item:
            rows.append(row_fn({**item, "pred": item[label_key]}))
    statistics = summarise(inputs, rows)
    write_json_atomic(Path(output_path), statistics)
    logger.info(f"training statistics of {statistics['cases']} case(s) written to {output_path}")
    return statistics


def _number(value: float) -> str:
    """A value as a reason shows it: three significant digits, whole numbers from 1000 on."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


@dataclass
class TrainingStatistics:
    """The ranges recorded at training time (``summarise``), and the review reasons they give a case."""

    ranges: dict[str, Any]
    source: str = ""

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> TrainingStatistics | None:
        """The statistics in ``path``; None (with one log line) when the file is not there, e.g. weights trained
        before statistics were recorded; a ``ValueError`` names a file that cannot be read."""
        if path is None or not Path(path).is_file():
            logger.warning(f"{path}: no training statistics beside the weights: input warnings are off and the "
                           f"documented measurement ranges apply (training writes the file)")  # fmt: skip
            return None
        try:
            ranges = json.loads(Path(path).read_text())
            for key in ("spacing_mm", "intensity", "measurements"):
                ranges[key]  # noqa: B018 - a missing section is a malformed file
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a training statistics file ({error}); retrain, or delete it to use the "
                             f"documented ranges") from error  # fmt: skip
        return cls(ranges=ranges, source=str(path))

    def input_reasons(self, statistics: Mapping[str, Any], spacing_factor: float = 2.0,
                      intensity_tolerance: float = 0.5) -> list[str]:  # fmt: skip
        """Why a case's input (its ``input_statistics``) is unlike the training images."""
        found = []
        spacing = statistics.get("spacing_mm", [])
        low, high = self.ranges["spacing_mm"]["low"], self.ranges["spacing_mm"]["high"]
        names = _AXES.get(len(spacing), tuple(f"axis {i}" for i in range(len(spacing))))
        for name, value, lo, hi in zip(names, spacing, low, high):
            if _finite_number(value) and (value < lo / spacing_factor or value > hi * spacing_factor):
                found.append(f"input spacing {_number(value)} mm ({name} axis) outside the training images' "
                             f"{_number(lo)}-{_number(hi)} mm (x{spacing_factor:g})")  # fmt: skip
        intensity = self.ranges["intensity"]
        given = statistics.get("intensity_percentiles", [])
        if len(given) != len(intensity["low"]):
            return found + [f"input has {len(given)} channel(s), the training images {len(intensity['low'])}"]
        for channel, (values, lows, highs, spread) in enumerate(
            zip(given, intensity["low"], intensity["high"], intensity["spread"])
        ):
            margin = intensity_tolerance * max(float(spread), 1e-6)
            for percentile, value, lo, hi in zip(intensity["percentiles"], values, lows, highs):
                if value < lo - margin or value > hi + margin:
                    where = f" of channel {channel}" if len(given) > 1 else ""
                    found.append(f"input intensity p{percentile:g}{where} {value:.3g} outside the training images' "
                                 f"{lo:.3g}-{hi:.3g} (normalised, +-{margin:.2g})")  # fmt: skip
        return found

    def measurement_range(self, column: str, documented: tuple[float | None, float | None],
                          factor: float = 1.5) -> tuple[float | None, float | None] | None:  # fmt: skip
        """The documented range of ``column`` widened to take in the training labels' range, itself widened by
        ``factor`` (low / factor, high * factor): a cohort outside the documented range (children, phantoms) is not
        flagged for the sizes the network was trained on, and the documented limits are never narrowed. An open
        side stays open; None when the training labels did not give the column."""
        recorded = self.ranges["measurements"].get(column)
        if recorded is None:
            return None
        low, high = float(recorded[0]) / factor, float(recorded[1]) * factor
        return (None if documented[0] is None else min(documented[0], low),
                None if documented[1] is None else max(documented[1], high))  # fmt: skip
