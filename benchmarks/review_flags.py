"""How well the review flags find bad outputs: each bundle evaluated on a labelled synthetic test set where some
cases were deliberately degraded, counting the flagged cases among the degraded and among the clean ones.

For every bundle (``--bundles``; default all), with its trained weights from ``--ckpt_dir``
(``<bundle>/models/model.pt``; freshly initialised weights where there are none, which flag about everything):

0. the flags compare each case with the training data's statistics (``common.training_statistics``): those training
   wrote beside the weights, or, for weights without them, statistics written by the bundle's ``statistics`` entry
   from the demo's training set (same generator, options and seed);
1. its task's generator writes ``--num_cases`` labelled test cases (the bundle's demo options; and one training
   case, unused, since a data set must list one);
2. the first ``--num_degraded`` of them are also written degraded, each in one of three ways, in turn:
   - ``noise``: Gaussian noise of a third of the image's 1st-99th percentile range;
   - ``intensity``: intensities a user's conversion can get wrong: CT with a wrong rescale intercept (HU + 300;
     without any, HU + 1024, the CT bundles refuse the scan as not in Hounsfield units), MR with a gamma of 3 on
     its normalised intensities, a photograph at a quarter of its brightness;
   - ``crop``: only the first half of the first image axis kept (image, label and mask alike), the anatomy cut;
3. ``evaluate.json`` scores every case (clean and degraded) with its review flag (``metrics.csv``, and the
   ``review`` section of ``metrics_summary.json``: mean Dice of flagged and unflagged cases, the share of the worst
   10 % that were flagged).

A degraded input need not give a bad output (half a photograph is segmented as well as a whole one), so the table
counts both ways: flagged among the bad outputs (case Dice below ``--bad_ratio`` times the median Dice of the clean
cases) and among the good ones, and flagged among the degraded and among the clean inputs.

Command line::

    python benchmarks/review_flags.py --output_dir OUT --ckpt_dir TRAINED [--bundles retinal,cardiac]
        [--num_cases 6] [--num_degraded 3] [--bad_ratio 0.8] [--flip True] [--quick]

``--flip True`` also runs ``inference.json`` over the test images without and with the optional flip check
(``--flip_check True``, which evaluation does not run): the extra seconds per case, how many bad and good outputs
its ``max_flip_disagreement`` flags, and each case's ``flip_disagreement``.

``--quick`` (the test suite's): the retinal bundle on three small photographs and their three degraded copies.

Writes ``results.csv`` (a row per bundle, with where its statistics came from), ``per_case.csv`` and ``results.md``
into ``output_dir``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fire
import nibabel as nib
import numpy as np
from options import as_tuple
from PIL import Image

import synthetic
from common import review
from common.profile import bundle_names, describe
from common.tables import write_csv_atomic

KINDS = ("noise", "intensity", "crop")
CT_TASKS = ("liver", "lung")
#: keys of a data-list entry that hold files of the case (an image may be a list, one file per modality)
FILE_KEYS = ("image", "label", "mask")


def degraded_name(path: str, kind: str) -> str:
    """``kind`` added to a file's case name, before a modality suffix: ``a_0001.nii.gz`` -> ``a-noise_0001.nii.gz``."""
    match = re.match(r"^(.*?)(_\d{4})?(\.nii\.gz|\.[A-Za-z0-9]+)$", path)
    if match is None:
        raise ValueError(f"{path}: no file extension")
    stem, modality, ext = match.groups()
    return f"{stem}-{kind}{modality or ''}{ext}"


def degrade_intensities(values: np.ndarray, kind: str, task: str, rng: np.random.Generator) -> np.ndarray:
    """The image values after ``noise`` or ``intensity`` degradation (float64; the caller restores the type)."""
    x = values.astype(np.float64)
    low, high = np.percentile(x, (1, 99))
    spread = max(high - low, 1e-6)
    if kind == "noise":
        return x + rng.normal(0.0, spread / 3.0, x.shape)
    if task in CT_TASKS:
        return x + 300.0  # a wrong rescale intercept (without any, HU + 1024, the bundles refuse the scan)
    if values.dtype == np.uint8:
        return x * 0.25  # a photograph, underexposed
    return low + spread * np.clip((x - low) / spread, 0.0, None) ** 3.0  # MR: another contrast curve


def _as_type(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` in ``dtype``, rounded and clipped to its range for integers."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _crop(values: np.ndarray) -> np.ndarray:
    """The first half of the first axis."""
    return values[: max(values.shape[0] // 2, 1)]


def rewrite(source: Path, target: Path, change: Callable[[np.ndarray], np.ndarray]) -> None:
    """Write ``change(pixels)`` of the NIfTI or picture ``source`` to ``target``, geometry and type kept."""
    if source.name.endswith((".nii", ".nii.gz")):
        image = nib.load(str(source))
        values = np.asanyarray(image.dataobj)
        header = image.header.copy()
        header.set_slope_inter(None, None)
        changed = _as_type(change(values), values.dtype)
        header.set_data_dtype(changed.dtype)
        nib.save(nib.Nifti1Image(changed, image.affine, header), str(target))
    else:
        values = np.asarray(Image.open(source))
        Image.fromarray(_as_type(change(values), values.dtype)).save(target)


def degrade_entry(entry: dict[str, Any], folder: Path, kind: str, task: str, seed: int) -> dict[str, Any]:
    """A copy of a data-list entry whose files are written degraded by ``kind`` (labels and masks only cropped)."""
    rng = np.random.default_rng(seed)
    out = dict(entry)
    for key in FILE_KEYS:
        if key not in entry:
            continue
        paths = entry[key] if isinstance(entry[key], list) else [entry[key]]
        written = []
        for path in paths:
            target = degraded_name(path, kind)
            if kind == "crop":
                change = _crop
            elif key == "image":
                change = lambda v: degrade_intensities(v, kind, task, rng)  # noqa: E731
            else:
                change = lambda v: v  # noqa: E731
            rewrite(folder / path, folder / target, change)
            written.append(target)
        out[key] = written if isinstance(entry[key], list) else written[0]
    if "subject" in out:
        out["subject"] = f"{out['subject']}-{kind}"  # its phases stay a pair of their own
    return out


def write_test_set(
    bundle: str, folder: Path, num_cases: int, num_degraded: int, seed: int, quick: bool = False
) -> dict[str, str]:
    """The labelled test set with degraded copies; returns ``{case name: kind}`` (``clean`` or a degradation)."""
    profile = describe(bundle)
    data = (profile.quick if quick else profile.demo)["data"]
    options = {k: v for k, v in data.items() if k not in ("num_train", "num_test", "seed")}
    dataset_path = Path(synthetic.write_dataset(profile.task, folder, 1, num_cases, seed=seed, **options))
    dataset = json.loads(dataset_path.read_text())
    test = list(dataset["test"])
    kinds = {}
    for entry in test:
        kinds[_case_of(entry)] = "clean"
    for index, entry in enumerate(test[:num_degraded]):
        kind = KINDS[index % len(KINDS)]
        copy = degrade_entry(entry, folder, kind, profile.task, seed + index)
        dataset["test"].append(copy)
        kinds[_case_of(copy)] = kind
    dataset_path.write_text(json.dumps(dataset, indent=1))
    return kinds


def _case_of(entry: dict[str, Any]) -> str:
    """The case name the evaluation table gives an entry: its (first) image's file name without extension."""
    image = entry["image"][0] if isinstance(entry["image"], list) else entry["image"]
    name = Path(image).name
    return re.sub(r"(_\d{4})?(\.nii\.gz|\.[A-Za-z0-9]+)$", "", name)


def checkpoint(bundle: str, ckpt_dir: str | None, work: Path, seed: int) -> tuple[Path, str]:
    """``ckpt_dir``'s weights of ``bundle`` where there are some, otherwise freshly initialised ones written to
    ``work``; and which of the two."""
    path = Path(ckpt_dir or "") / bundle / "models" / "model.pt"
    if ckpt_dir and path.is_file():
        return path, "trained"
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(ROOT / "bundles" / bundle)
    torch.manual_seed(seed)
    work.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), work / "untrained_model.pt")
    return work / "untrained_model.pt", "untrained"


def with_statistics(bundle: str, ckpt: Path, work: Path, quick: bool = False) -> tuple[Path, str]:
    """Weights with the training statistics the review flags compare each case with: ``ckpt`` itself where training
    wrote them beside it; otherwise a copy of ``ckpt`` in ``work`` with statistics written by the bundle's
    ``statistics`` entry from the training set of its demo (the same generator, options and seed: the data the demo
    trains on). Returns the weights and where their statistics came from."""
    if (ckpt.parent / "training_statistics.json").is_file():
        return ckpt, "recorded in training"
    profile = describe(bundle)
    data = dict((profile.quick if quick else profile.demo)["data"])
    counts = {"num_train": data.pop("num_train"), "num_test": data.pop("num_test", 1)}
    train_data = work / "train_data"
    synthetic.write_dataset(profile.task, train_data, counts["num_train"], counts["num_test"], **data)
    copy = work / "weights" / "model.pt"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(ckpt.read_bytes())
    root = ROOT / "bundles" / bundle
    cmd = [sys.executable, "-m", "monai.bundle", "run", "statistics", "--config_file",
           str(root / "configs" / "train.json"), "--bundle_root", str(root), "--dataset_dir", str(train_data),
           "--ckpt_path", str(copy)]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{bundle}: training statistics failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return copy, "from the demo's training set"


def evaluate(bundle: str, data: Path, ckpt: Path, out: Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Run ``evaluate.json``; returns the rows of ``metrics.csv`` and the ``review`` section of the summary."""
    root = ROOT / "bundles" / bundle
    configs = [str(root / "configs" / "train.json"), str(root / "configs" / "evaluate.json")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs), "--bundle_root",
           str(root), "--dataset_dir", str(data), "--ckpt_path", str(ckpt), "--output_dir", str(out)]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{bundle}: evaluation failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    review = json.loads((out / "metrics_summary.json").read_text()).get("review", {})
    return rows, review


def _run_inference(bundle: str, inputs: Path, ckpt: Path, out: Path, flip_check: bool) -> float:
    """Run ``inference.json`` over ``inputs`` (no review page) with the flip check on or off; its wall seconds."""
    root = ROOT / "bundles" / bundle
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "inference.json"),
           "--bundle_root", str(root), "--input_dir", str(inputs), "--output_dir", str(out), "--ckpt_path", str(ckpt),
           "--flip_check", str(flip_check), "--write_report", "False"]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{bundle}: inference failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def flip_check(bundle: str, data: Path, ckpt: Path, out: Path) -> dict[str, Any]:
    """The optional flip check on the test images: inference without and with it, the extra seconds per case, and
    each case's ``flip_disagreement`` and whether the check flagged it (``{}`` for a bundle that has no axis to
    flip, as its config says)."""
    config = json.loads((ROOT / "bundles" / bundle / "configs" / "inference.json").read_text())
    check = [t for t in config["postprocessing"]["transforms"] if t["_target_"].endswith("FlipAgreementd")]
    if not check or not check[0].get("spatial_axes"):
        return {}
    first = json.loads((data / "dataset.json").read_text())["test"][0]["image"]
    inputs = (data / (first[0] if isinstance(first, list) else first)).parent
    seconds = {on: _run_inference(bundle, inputs, ckpt, out / f"flip_{on}", on) for on in (False, True)}
    tables = [t for t in (out / "flip_True").glob("*.csv") if "flip_disagreement" in t.open().readline()]
    with open(tables[0], newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        "extra_s_per_case": (seconds[True] - seconds[False]) / max(len(rows), 1),
        "cases": {r["case"]: (float(r["flip_disagreement"]), "unstable" in r["review_reasons"]) for r in rows},
    }


def flip_summary(check: dict[str, Any], dice: dict[str, float], limit: float) -> dict[str, Any]:
    """The flip check's columns of a results row: its cost, and how many bad and good outputs it flagged."""
    if not check:
        return {"flip_extra_s_per_case": math.nan, "flip_flagged_bad": "", "flip_flagged_good": ""}
    flagged = {case: flag for case, (_, flag) in check["cases"].items()}
    bad = [case for case in flagged if not dice.get(case, math.nan) >= limit]
    return {
        "flip_extra_s_per_case": round(check["extra_s_per_case"], 2),
        "flip_flagged_bad": f"{sum(flagged[c] for c in bad)}/{len(bad)}",
        "flip_flagged_good": f"{sum(flagged.values()) - sum(flagged[c] for c in bad)}/{len(flagged) - len(bad)}",
    }


def _mean(values: list[float]) -> float:
    """Mean of the finite values (NaN when none)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def case_dice(row: dict[str, str]) -> float:
    """A case's Dice as the evaluation summary counts it: the mean of its finite per-class Dice columns."""
    return review.case_dice(row, review.dice_columns([row]))


def summarize_bundle(
    bundle: str, rows: list[dict[str, str]], kinds: dict[str, str], review: dict, bad_ratio: float = 0.8
) -> dict[str, Any]:
    """One results row: flagged counts among bad outputs (Dice below ``bad_ratio`` times the clean cases' median
    Dice) and good ones, among degraded and clean inputs, their Dice, and the evaluation summary's figures."""
    flagged = {row["case"]: row.get("review") in ("True", "true", "1") for row in rows}
    dice = {row["case"]: case_dice(row) for row in rows}
    degraded = [case for case in flagged if kinds.get(case, "clean") != "clean"]
    clean = [case for case in flagged if kinds.get(case, "clean") == "clean"]
    clean_dice = [dice[c] for c in clean if math.isfinite(dice[c])]
    limit = bad_ratio * float(np.median(clean_dice)) if clean_dice else math.nan
    bad = [case for case in flagged if not dice[case] >= limit]  # a NaN Dice (nothing to score) is not good
    good = [case for case in flagged if case not in bad]
    figures = {k: review.get(k, math.nan) for k in ("worst_flagged", "mean_dice_flagged", "mean_dice_unflagged")}
    return {
        "bundle": bundle,
        "cases": len(rows),
        "bad_below_dice": round(limit, 3),
        "bad": len(bad),
        "bad_flagged": sum(flagged[c] for c in bad),
        "good": len(good),
        "good_flagged": sum(flagged[c] for c in good),
        "degraded": len(degraded),
        "degraded_flagged": sum(flagged[c] for c in degraded),
        "clean_flagged": sum(flagged[c] for c in clean),
        "dice_degraded": round(_mean([dice[c] for c in degraded]), 3),
        "dice_clean": round(_mean(clean_dice), 3),
        **{k: round(float(v), 3) if v is not None else math.nan for k, v in figures.items()},
    }


def markdown(rows: list[dict[str, Any]], cases: list[dict[str, Any]]) -> str:
    """The results and per-case tables as Markdown."""

    def table(items: list[dict[str, Any]]) -> list[str]:
        if not items:
            return ["(none)"]
        columns = list(items[0])
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(str(item[c]) for c in columns) + " |" for item in items]
        return lines

    return "\n".join(["# Review flags on degraded cases", "", *table(rows), "", "## Per case", "", *table(cases), ""])


def main(
    output_dir: str,
    ckpt_dir: str | None = None,
    bundles: Any = None,
    num_cases: int = 6,
    num_degraded: int = 3,
    seed: int = 5,
    bad_ratio: float = 0.8,
    quick: bool = False,
    flip: bool = False,
) -> str:
    """Evaluate every bundle on clean and degraded synthetic cases; write the tables; return the Markdown path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        bundles, num_cases, num_degraded = bundles or "retinal", 3, 3
    names = [
        b for b in bundle_names() if not bundles or b in as_tuple(bundles) or describe(b).task in as_tuple(bundles)
    ]
    results, per_case = [], []
    for bundle in names:
        start = time.perf_counter()
        ckpt, weights = checkpoint(bundle, ckpt_dir, out / bundle, seed)
        ckpt, statistics = with_statistics(bundle, ckpt, out / bundle, quick)
        data = out / bundle / "data"
        kinds = write_test_set(bundle, data, num_cases, num_degraded, seed, quick)
        rows, review = evaluate(bundle, data, ckpt, out / bundle / "eval")
        summary = summarize_bundle(bundle, rows, kinds, review, bad_ratio)
        checked = flip_check(bundle, data, ckpt, out / bundle) if flip else {}
        dice = {row["case"]: case_dice(row) for row in rows}
        flips = flip_summary(checked, dice, summary["bad_below_dice"]) if flip else {}
        results.append({**summary, **flips, "weights": weights, "statistics": statistics})
        for row in rows:
            disagreement = checked.get("cases", {}).get(row["case"], (math.nan, False))[0]
            per_case.append({"bundle": bundle, "case": row["case"], "kind": kinds.get(row["case"], "clean"),
                             "dice": round(dice[row["case"]], 4), "review": row.get("review"),
                             **({"flip_disagreement": round(disagreement, 3)} if flip else {}),
                             "reasons": row.get("review_reasons", "")})  # fmt: skip
        print(f"{bundle}: {results[-1]} ({time.perf_counter() - start:.0f} s)", flush=True)
    write_csv_atomic(out / "results.csv", results)
    write_csv_atomic(out / "per_case.csv", per_case)
    path = out / "results.md"
    path.write_text(markdown(results, per_case))
    print(path.read_text())
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
