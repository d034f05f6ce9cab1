"""End-to-end demo of the cardiac bundle on synthetic data: generate, train, evaluate, infer, report, overlay.

Every step runs the bundle as a user types it (``python -m monai.bundle run ...``). Run from the repository root::

    python bundles/cardiac_mr_fcn/scripts/demo.py --output_dir demo_cardiac --max_epochs 60
"""

from __future__ import annotations

import json
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

#: label colours of the overlays: RV cavity blue, myocardium green, LV cavity red
COLOURS = np.array([[0, 0, 0], [40, 120, 255], [40, 200, 60], [255, 60, 40]], np.uint8)


def overlay(image_path: Path, label_path: Path, seg_path: Path, out_path: Path) -> None:
    """Write the mid-ventricular slice as image | ground truth | prediction (labels coloured over the image)."""
    image = np.asarray(nib.load(image_path).dataobj, np.float32)
    truth = np.asarray(nib.load(label_path).dataobj).astype(int)
    pred = np.asarray(nib.load(seg_path).dataobj).astype(int)
    k = image.shape[2] // 3
    grey = np.clip(image[..., k] / np.percentile(image, 99.5), 0, 1)
    grey = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)

    def coloured(label: np.ndarray) -> np.ndarray:
        mix = grey.copy()
        inside = label[..., k] > 0
        mix[inside] = (0.4 * grey[inside] + 0.6 * COLOURS[label[..., k][inside]]).astype(np.uint8)
        return mix

    Image.fromarray(np.concatenate([grey, coloured(truth), coloured(pred)], axis=1)).save(out_path)


def results_table(eval_dir: Path) -> str:
    """Markdown tables: Dice and HD95 per class, and the errors of the clinical indices per subject."""
    summary = json.loads((eval_dir / "metrics_summary.json").read_text())
    subjects = json.loads((eval_dir / "subjects_summary.json").read_text())
    rows = ["| class | Dice mean | Dice std | HD95 mean (mm) | HD95 std (mm) |", "| --- | --- | --- | --- | --- |"]
    for name, title in (("lv", "LV cavity"), ("myo", "LV myocardium"), ("rv", "RV cavity")):
        dice, hd = summary[f"dice_{name}"], summary[f"hd95_{name}_mm"]
        rows.append(f"| {title} | {dice['mean']:.3f} | {dice['std']:.3f} | {hd['mean']:.2f} | {hd['std']:.2f} |")
    rows += ["", "| clinical index | mean absolute error | max absolute error |", "| --- | --- | --- |"]
    for key, title in (
        ("lv_ef_percent", "LV EF (percentage points)"),
        ("rv_ef_percent", "RV EF (percentage points)"),
        ("lv_edv_ml", "LV EDV (mL)"),
        ("lv_esv_ml", "LV ESV (mL)"),
        ("myo_mass_ed_g", "myocardial mass at ED (g)"),
    ):
        err = subjects[f"abs_error_{key}"]
        rows.append(f"| {title} | {err['mean']:.2f} | {err['max']:.2f} |")
    return "\n".join(rows + [f"\n{summary['cases']} held-out frames, {subjects['cases']} subjects with ED and ES"])


def main(
    output_dir: str = "demo_cardiac",
    max_epochs: int = 60,
    val_interval: int = 5,
    num_train: int = 16,
    num_test: int = 4,
    seed: int = 0,
    num_workers: int = 2,
) -> None:
    """Generate synthetic short-axis stacks, train the bundle, evaluate, segment the test stacks, print the tables."""
    out = Path(output_dir).resolve()
    start = time.time()
    index = json.loads(Path(write_dataset(str(out / "data"), num_train, num_test, None, seed)).read_text())
    train_seconds = train_evaluate_infer(
        BUNDLE, out, out / "data", index["test"], max_epochs, val_interval, num_workers
    )
    for case in index["test"][:4]:
        stem = Path(case["image"]).name[: -len(".nii.gz")]
        overlay(
            out / "data" / case["image"],
            out / "data" / case["label"],
            out / "inference" / f"{stem}_seg.nii.gz",
            out / f"overlay_{stem}.png",
        )
    print(f"\nTraining: {max_epochs} epochs in {train_seconds:.0f} s; whole demo {time.time() - start:.0f} s")
    print(f"Held-out synthetic test split, in each stack's own grid ({out / 'eval'}):\n")
    print(results_table(out / "eval"))
    print(f"\nSegmentations, volumes and clinical.csv (EF, volumes, mass): {out / 'inference'}")
    print(f"Overlays (mid-ventricular slice: image | truth | prediction): {out}/overlay_*.png")


if __name__ == "__main__":
    fire.Fire(main)
