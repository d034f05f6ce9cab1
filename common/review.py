"""Which outputs of a run a person should check: per-case quality signals of the network's probabilities, and the
plausibility rules of a bundle (``review_rules`` in its inference.json) that turn a case's measurements and signals
into a ``review`` flag and its reasons.

The signals are computed during inference, by ``QualitySignalsd`` placed right after the softmax (the probabilities
of every class, in the working grid); ``ReviewRow`` wraps a bundle's row function so that the measurements table
gets the columns ``mean_entropy``, ``mean_margin``, ``foreground_fraction``, ``review`` and ``review_reasons``.

Evaluation flags every labelled case the same way (the rules read from the bundle's inference.json by ``rules_of``,
the evaluation scores and the inference measurements in one row by ``MergedRow``), and ``review_summary`` tells how
well the flags find the cases of low Dice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.training_statistics import TrainingStatistics, input_statistics

#: the columns this module adds to a measurements row, in order
SIGNALS = ("mean_entropy", "mean_margin", "foreground_fraction")
#: signals of optional checks, added where they ran
OPTIONAL_SIGNALS = ("flip_disagreement",)
REVIEW_COLUMNS = (*SIGNALS, "review", "review_reasons")
#: the numeric settings of ``review_rules``
_NUMBERS = ("max_entropy", "min_margin", "max_flip_disagreement", "training_range_factor", "spacing_factor",
            "intensity_tolerance")
#: column-name endings and how a reason names the column and its unit (``liver_ml`` -> ``liver volume ... mL``)
_UNITS = {"_ml": (" volume", " mL"), "_mm3": (" volume", " mm3"), "_percent": ("", " %"), "_mm": ("", " mm")}


def quality_signals(prob: torch.Tensor) -> dict[str, float]:
    """Mean normalised entropy (0..1) and mean top-1 minus top-2 margin of channel-first class probabilities inside
    the predicted foreground (argmax > 0), and the fraction of the grid that is foreground (NaN signals when none)."""
    values = prob.as_tensor() if isinstance(prob, MetaTensor) else torch.as_tensor(prob)
    classes = values.shape[0]
    if classes < 2:
        raise ValueError(f"quality signals need the probabilities of at least 2 classes, got {classes} channel(s)")
    foreground = values.max(dim=0).indices > 0  # max().indices: the first of equal maxima, as argmax
    count = int(foreground.sum())
    fraction = count / max(foreground.numel(), 1)
    if count == 0:
        return {"mean_entropy": math.nan, "mean_margin": math.nan, "foreground_fraction": 0.0}
    inside = values[:, foreground].float()  # C x N: the foreground voxels only
    entropy = -(inside * torch.log(inside.clamp_min(1e-12))).sum(dim=0) / math.log(classes)
    top = inside.topk(2, dim=0).values
    return {
        "mean_entropy": float(entropy.mean()),
        "mean_margin": float((top[0] - top[1]).mean()),
        "foreground_fraction": float(fraction),
    }


class QualitySignalsd(MapTransform):
    """Store ``quality_signals`` of the probabilities under ``keys`` (C channels, after the softmax) as a plain dict
    of floats in ``output_key``; the probabilities are not changed.

    Args:
        keys: key of the class probabilities (one key).
        output_key: key of the signals' dict (read by ``ReviewRow``).
    """

    def __init__(self, keys: KeysCollection = "pred", output_key: str = "quality", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            with torch.no_grad():
                d[self.output_key] = quality_signals(d[key])
        return d


def _number(value: float) -> str:
    """A measurement as a reason shows it: three significant digits, whole numbers from 1000 on."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def describe_column(column: str) -> tuple[str, str]:
    """How a reason names a column and its unit: ``liver_ml`` -> ``("liver volume", " mL")``."""
    for ending, (noun, unit) in _UNITS.items():
        if column.endswith(ending):
            return column[: -len(ending)].replace("_", " ") + noun, unit
    return column.replace("_", " "), ""


@dataclass
class ReviewRules:
    """A bundle's plausibility rules (the ``review_rules`` mapping of its inference.json).

    Args:
        ranges: ``{column: [low, high]}``: a value outside is flagged (``null`` for an open side; a missing or NaN
            value is not judged).
        max_entropy: flag a mean normalised entropy inside the structures above this.
        min_margin: flag a mean top-1 minus top-2 margin inside the structures below this.
        flag_empty: flag a case where the network found no foreground at all (``nothing found``).
        max_flip_disagreement: flag a case whose flipped-input prediction disagrees on more than this share of the
            structures (``common.flip_check``; only where that optional check ran).
        training_range_factor: with training statistics (``common.training_statistics``), the range of a column
            of ``ranges`` is widened to take in the training labels' range, itself widened by this factor.
        spacing_factor, intensity_tolerance: how far an input's spacing and normalised intensities may lie
            outside the training images' before they are a reason (``TrainingStatistics.input_reasons``).
    """

    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    max_entropy: float | None = None
    min_margin: float | None = None
    flag_empty: bool = False
    max_flip_disagreement: float | None = None
    training_range_factor: float = 1.5
    spacing_factor: float = 2.0
    intensity_tolerance: float = 0.5

    @classmethod
    def from_config(cls, rules: Mapping[str, Any] | None) -> ReviewRules:
        """Rules from a config mapping; a ``ValueError`` names an unknown key or a malformed range."""
        rules = {k: v for k, v in dict(rules or {}).items() if k != "_desc_"}  # _desc_: prose for the reader
        unknown = set(rules) - {"ranges", "flag_empty", *_NUMBERS}
        if unknown:
            raise ValueError(f"review_rules: unknown key(s) {sorted(unknown)}; use ranges, flag_empty, "
                             f"{', '.join(_NUMBERS)}")  # fmt: skip
        ranges = {}
        for column, bounds in dict(rules.get("ranges") or {}).items():
            if not isinstance(bounds, Sequence) or isinstance(bounds, str) or len(bounds) != 2:
                raise ValueError(f"review_rules: range of {column!r} must be [low, high] (null for an open side)")
            low, high = (None if b is None else float(b) for b in bounds)
            if low is None and high is None or (low is not None and high is not None and low > high):
                raise ValueError(f"review_rules: range of {column!r} is {list(bounds)}: give low <= high, or null")
            ranges[str(column)] = (low, high)
        numbers = {k: float(rules[k]) for k in _NUMBERS if rules.get(k) is not None}
        return cls(ranges=ranges, flag_empty=bool(rules.get("flag_empty", False)), **numbers)

    def reasons(
        self,
        row: Mapping[str, Any],
        training: TrainingStatistics | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Why a case (its measurements and signals in one row) should be checked; empty when nothing is odd. With
        ``training`` statistics, each documented range is widened to take in the training labels' range, and the
        case's input statistics (``inputs``) are compared with the training images'."""
        found: list[str] = []
        if self.flag_empty and row.get("foreground_fraction") == 0:
            found.append("nothing found")
        if training is not None and inputs is not None:
            found += training.input_reasons(inputs, self.spacing_factor, self.intensity_tolerance)
        for column, documented in self.ranges.items():
            if column not in row:
                raise KeyError(f"review_rules: no column {column!r} in the row (columns: {', '.join(row)})")
            value = row[column]
            if value is None or isinstance(value, bool) or not math.isfinite(float(value)):
                continue
            widened = None if training is None else training.measurement_range(
                column, documented, self.training_range_factor)  # fmt: skip
            low, high = documented if widened is None else widened
            source = " (documented, widened to the training labels')" if (low, high) != documented else ""
            found += _range_reason(column, float(value), low, high, source)
        entropy, margin = row.get("mean_entropy"), row.get("mean_margin")
        if self.max_entropy is not None and _finite(entropy) and entropy > self.max_entropy:
            found.append(f"uncertain: mean entropy {entropy:.2f} > {self.max_entropy:.2f} inside the structures")
        if self.min_margin is not None and _finite(margin) and margin < self.min_margin:
            found.append(f"uncertain: mean margin {margin:.2f} < {self.min_margin:.2f} inside the structures")
        flip = row.get("flip_disagreement")
        if self.max_flip_disagreement is not None and _finite(flip) and flip > self.max_flip_disagreement:
            found.append(f"unstable: the flipped input's prediction differs on {100 * flip:.0f} % of the structures "
                         f"(> {100 * self.max_flip_disagreement:.0f} %)")  # fmt: skip
        return found


def _range_reason(column: str, value: float, low: float | None, high: float | None, source: str) -> list[str]:
    """The reason a column's value outside ``[low, high]`` gives (none inside); ``source`` names the range's."""
    name, unit = describe_column(column)
    if (low is None or value >= low) and (high is None or value <= high):
        return []
    if low is not None and high is not None:
        return [f"{name} {_number(value)}{unit} outside {_number(low)}-{_number(high)}{unit}{source}"]
    if high is not None:
        return [f"{name} {_number(value)}{unit} > {_number(high)}{unit}{source}"]
    return [f"{name} {_number(value)}{unit} < {_number(low)}{unit}{source}"]


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def review_flag(
    row: Mapping[str, Any],
    rules: ReviewRules | Mapping[str, Any],
    training: TrainingStatistics | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"review": bool, "review_reasons": "; "-joined text}`` of a row holding a case's measurements and signals
    (``ReviewRules.reasons``)."""
    rules = rules if isinstance(rules, ReviewRules) else ReviewRules.from_config(rules)
    reasons = rules.reasons(row, training, inputs)
    return {"review": bool(reasons), "review_reasons": "; ".join(reasons)}


class ReviewRow:
    """A bundle's inference row function with the quality signals and the review flag added: calls ``row_fn(item)``,
    then adds ``mean_entropy``, ``mean_margin`` and ``foreground_fraction`` from ``item[quality_key]`` (set by
    ``QualitySignalsd``; also ``flip_disagreement`` where ``common.flip_check.FlipAgreementd`` ran) and ``review`` /
    ``review_reasons`` from ``rules``. For ``CaseTableWriter``'s ``row_fn``.

    With ``statistics_path`` (the ``training_statistics.json`` training wrote beside the weights), the case's input
    (``item[image_key]``, the network's input in its working grid) is compared with the training images, and the
    measurement ranges come from the training labels (see ``ReviewRules``); without the file, the documented
    ranges apply and there are no input warnings (one log line says so).

    Args:
        row_fn: the bundle's row function (one post-processed case -> a dict of measurements).
        rules: the bundle's ``review_rules`` (see ``ReviewRules``).
        quality_key: key of the signals in the item.
        statistics_path: the training statistics file, or None.
        image_key: key of the network's input in the item.
    """

    def __init__(
        self,
        row_fn: Callable[[dict[str, Any]], dict[str, Any]],
        rules: Mapping[str, Any] | None = None,
        quality_key: str = "quality",
        statistics_path: str | os.PathLike | None = None,
        image_key: str = "image",
    ) -> None:
        self.row_fn = row_fn
        self.rules = ReviewRules.from_config(rules)
        self.quality_key = quality_key
        self.training = None if statistics_path is None else TrainingStatistics.load(statistics_path)
        self.image_key = image_key

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        row = dict(self.row_fn(item))
        quality = item.get(self.quality_key)
        if quality is None:
            raise KeyError(f"no {self.quality_key!r} in the case: put common.review.QualitySignalsd after the softmax")
        row.update({name: float(quality[name]) for name in (*SIGNALS, *OPTIONAL_SIGNALS) if name in quality})
        inputs = None
        if self.training is not None:
            if self.image_key not in item:
                raise KeyError(f"no {self.image_key!r} in the case: the input warnings need the network's input")
            inputs = input_statistics(item[self.image_key])
        row.update(review_flag(row, self.rules, self.training, inputs))
        return row


def rules_of(bundle_root: str | os.PathLike, config: str = "configs/inference.json") -> dict[str, Any]:
    """The ``review_rules`` mapping of a bundle's inference config, as written there: evaluation applies the rules
    of inference without a copy of them (``"review_rules": {"_target_": "common.review.rules_of", ...}``)."""
    path = Path(bundle_root) / config
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; the review rules are read from the bundle's inference config")
    rules = ConfigParser.load_config_file(path).get("review_rules")
    if not isinstance(rules, Mapping):
        raise ValueError(f"{path}: review_rules must be a mapping (ranges, max_entropy, min_margin, flag_empty), "
                         f"got {rules!r}")  # fmt: skip
    ReviewRules.from_config(rules)  # a malformed mapping fails here, naming the key
    return dict(rules)


def _same(a: Any, b: Any) -> bool:
    """Whether two values of a column are the same (NaN equals NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:  # tensors, arrays: not comparable as one truth value
        return a is b


class MergedRow:
    """One row from several row functions of the same case, e.g. a bundle's evaluation scores and its inference
    measurements (that the review rules read): ``{**row_fns[0](item), **row_fns[1](item), ...}``. A column given
    by two of them must have the same value in both, else a ``ValueError`` names it.

    Args:
        row_fns: the row functions, each one post-processed case -> a dict of values.
    """

    def __init__(self, row_fns: Sequence[Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
        if not row_fns:
            raise ValueError("MergedRow needs at least one row function")
        self.row_fns = list(row_fns)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for row_fn in self.row_fns:
            for column, value in row_fn(item).items():
                if column in row and not _same(row[column], value):
                    raise ValueError(f"column {column!r} given twice with different values ({row[column]!r}, "
                                     f"{value!r}) by the merged row functions")  # fmt: skip
                row[column] = value
        return row


def dice_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The per-class Dice columns of an evaluation table: ``dice`` or ``dice_<class>``, in the rows' order (not
    ``lesion_dice``, ``cldice``...)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if (c == "dice" or c.startswith("dice_")) and c not in columns]
    return columns


def _number_or_nan(value: Any) -> float:
    """A row's value as a float; NaN for a missing, empty or non-numeric one."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def case_dice(row: Mapping[str, Any], columns: Sequence[str]) -> float:
    """A case's main Dice: the mean of its finite per-class Dice values (NaN when it has none)."""
    values = [v for v in (_number_or_nan(row.get(c)) for c in columns) if math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def _flagged(row: Mapping[str, Any]) -> bool:
    """Whether a row's ``review`` is set (a bool, or its text in a CSV read back)."""
    value = row.get("review")
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


def _mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def review_summary(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, worst: float = 0.1
) -> dict[str, Any]:
    """How well the review flags find the bad cases of a labelled set (the ``review`` section of an evaluation
    summary), from rows holding ``review`` and per-class Dice columns.

    A case's Dice is the mean of its finite per-class Dice values (``case_dice``; ``columns`` default to
    ``dice_columns(rows)``). Returns the number of ``cases`` and of ``flagged`` ones, the mean Dice of the flagged
    and of the unflagged cases (``mean_dice_flagged``, ``mean_dice_unflagged``; NaN for a group without a case
    with a Dice), and ``worst_flagged``: the fraction of the worst ``worst`` share of the cases with a Dice (the
    ``worst_cases`` lowest, at least one; ties broken by file order) that were flagged, NaN when no case has a Dice.
    """
    columns = list(dice_columns(rows) if columns is None else columns)
    scored = [(case_dice(row, columns), _flagged(row)) for row in rows]
    ranked = sorted((dice, index) for index, (dice, _) in enumerate(scored) if math.isfinite(dice))
    count = max(1, int(worst * len(ranked) + 1e-9)) if ranked else 0
    return {
        "cases": len(rows),
        "flagged": sum(flag for _, flag in scored),
        "mean_dice_flagged": _mean([dice for dice, flag in scored if flag]),
        "mean_dice_unflagged": _mean([dice for dice, flag in scored if not flag]),
        "worst_cases": count,
        "worst_flagged": sum(scored[index][1] for _, index in ranked[:count]) / count if count else math.nan,
        "dice_columns": columns,
    }
