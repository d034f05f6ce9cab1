"""End-to-end demo of the lung nodule bundle on synthetic chest CT: generate, train, evaluate, infer, report.

Every step runs the bundle as a user types it (``python -m monai.bundle run ...``). Run from the repository root::

    python bundles/lung_nodule_fcn3d/scripts/demo.py --output_dir runs/lung_demo
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
from PIL import Image

BUNDLE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUNDLE))

from common.runner import train_evaluate_infer  # noqa: E402
from scripts.synthetic import write_dataset  # noqa: E402


def overlay(image_path: Path, label_path: Path, seg_path: Path, out_path: Path) -> None:
    """Write the axial slice with the most nodule as CT | truth (red) | prediction (red), lung window."""
    ct = np.asarray(nib.as_closest_canonical(nib.load(image_path)).dataobj, np.float32)
    truth = np.asarray(nib.as_closest_canonical(nib.load(label_path)).dataobj) > 0
    pred = np.asarray(nib.as_closest_canonical(nib.load(seg_path)).dataobj) > 0
    k = int(np.argmax(truth.sum(axis=(0, 1))))
    grey = (np.clip((ct[..., k] + 1000) / 1400, 0, 1) * 255).astype(np.uint8)
    grey = np.repeat(grey[..., None], 3, axis=2)

    def coloured(mask: np.ndarray) -> np.ndarray:
        mix = grey.copy()
        mix[mask[..., k]] = (0.4 * grey[mask[..., k]] + [153, 0, 0]).astype(np.uint8)
        return mix

    # RAS arrays, shown as radiologists read axial CT: anterior up, the patient's right on the image's left
    panels = [np.fliplr(np.rot90(p)) for p in (grey, coloured(truth), coloured(pred))]
    Image.fromarray(np.concatenate(panels, axis=1)).save(out_path)


def pooled(metrics_csv: Path) -> dict[str, float]:
    """Sensitivities pooled over all held-out nodules and false positives per scan, from the per-case metrics."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = ("true_nodules", "detected_nodules", "true_nodules_5mm", "detected_nodules_5mm", "false_positives")
    total = {k: sum(float(r[k]) for r in rows) for k in keys}
    # voxel Dice over all held-out nodule volume at once (LiTS's "Dice global"), in mm3 since the grids differ
    both = [float(r["true_volume_mm3"]) + float(r["pred_volume_mm3"]) for r in rows]
    overlap = sum(float(r["dice"]) * b for r, b in zip(rows, both) if b > 0)
    return {
        "dice_global": overlap / sum(both) if sum(both) else math.nan,
        "sensitivity": total["detected_nodules"] / total["true_nodules"] if total["true_nodules"] else math.nan,
        "sensitivity_5mm": total["detected_nodules_5mm"] / total["true_nodules_5mm"]
        if total["true_nodules_5mm"]
        else math.nan,
        "false_positives_per_scan": total["false_positives"] / len(rows),
        **total,
    }


def results_table(summary_path: Path, metrics_csv: Path) -> str:
    """Markdown tables of the evaluation: per-case means and the pooled lesion-wise detection."""
    s = json.loads(summary_path.read_text())
    rows = ["| metric (per case) | mean | std | min | max |", "| --- | --- | --- | --- | --- |"]
    for key, title in (
        ("dice", "voxel Dice"),
        ("sensitivity", "lesion-wise sensitivity"),
        ("sensitivity_5mm", "lesion-wise sensitivity, nodules >= 5 mm"),
        ("false_positives", "false positives per scan"),
        ("lesion_dice", "lesion-wise Dice"),
    ):
        if key in s:
            v = s[key]
            rows.append(f"| {title} | {v['mean']:.3f} | {v['std']:.3f} | {v['min']:.3f} | {v['max']:.3f} |")
    p = pooled(metrics_csv)
    rows += [
        "",
        "| pooled over the held-out scans | value |",
        "| --- | --- |",
        f"| sensitivity, all nodules | {p['sensitivity']:.3f} ({p['detected_nodules']:.0f}/{p['true_nodules']:.0f}) |",
        f"| sensitivity, nodules >= 5 mm | {p['sensitivity_5mm']:.3f} "
        f"({p['detected_nodules_5mm']:.0f}/{p['true_nodules_5mm']:.0f}) |",
        f"| false positives per scan | {p['false_positives_per_scan']:.2f} ({p['false_positives']:.0f} in all) |",
        f"| voxel Dice over all nodule voxels (global Dice) | {p['dice_global']:.3f} |",
    ]
    return "\n".join(rows + [f"\n{s['cases']} held-out cases"])


def nodules_table(nodules_csv: Path) -> str:
    """The inference's nodule table (every predicted nodule of every case) as Markdown."""
    if not nodules_csv.exists():
        return "(no nodules found)"
    with open(nodules_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = ["case", "nodule", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "volume_mm3",
            "equivalent_diameter_mm", "longest_axial_diameter_mm", "mean_hu", "mean_probability"]  # fmt: skip
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(r.get(k, "") for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(
    output_dir: str = "runs/lung_demo",
    max_epochs: int = 100,
    val_interval: int = 20,
    num_train: int = 32,
    num_test: int = 12,
    size: int = 160,
    seed: int = 0,
    num_workers: int = 2,
) -> None:
    """Generate synthetic chest CT, train, evaluate, segment the test cases, print the tables, write overlays."""
    out = Path(output_dir).resolve()
    start = time.time()
    index = json.loads(Path(write_dataset(str(out / "data"), num_train, num_test, size, seed)).read_text())
    train_seconds = train_evaluate_infer(
        BUNDLE, out, out / "data", index["test"], max_epochs, val_interval, num_workers
    )
    for case in index["test"]:
        stem = Path(case["image"]).name[: -len(".nii.gz")]
        overlay(
            out / "data" / case["image"],
            out / "data" / case["label"],
            out / "inference" / f"{stem}_seg.nii.gz",
            out / f"overlay_{stem}.png",
        )
    print(f"\nTraining: {max_epochs} epochs in {train_seconds:.0f} s; whole demo {time.time() - start:.0f} s")
    print(f"Held-out synthetic test cases, in each case's own grid ({out / 'eval'}):\n")
    print(results_table(out / "eval" / "metrics_summary.json", out / "eval" / "metrics.csv"))
    print("\nTrue nodules of the test cases (centre mm, equivalent diameter mm):")
    for case in index["test"]:
        print(f"  {case['subject']}: " + "; ".join(f"{n['centre_mm']} {n['diameter_mm']}" for n in case["nodules"]))
    print(f"\nNodules found by inference ({out / 'inference' / 'nodules.csv'}):\n")
    print(nodules_table(out / "inference" / "nodules.csv"))
    print(f"\nOverlays (axial slice: CT | truth | prediction): {out}/overlay_*.png")


if __name__ == "__main__":
    fire.Fire(main)
