"""End-to-end demo of the liver bundle on synthetic CT: generate, train, evaluate, infer, report, overlay.

Every step runs the bundle as a user types it (``python -m monai.bundle run ...``). Run from the repository root::

    python bundles/liver_ct_unet3d/scripts/demo.py --output_dir demo_liver
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

#: label colours of the overlays: liver green, tumour red
COLOURS = np.array([[0, 0, 0], [40, 200, 60], [255, 50, 40]], np.uint8)


def overlay(image_path: Path, label_path: Path, seg_path: Path, out_path: Path) -> None:
    """Write the axial slice with the most tumour (else the most liver) as CT | ground truth | prediction."""
    image = nib.as_closest_canonical(nib.load(image_path))
    ct = np.asarray(image.dataobj, np.float32)
    truth = np.asarray(nib.as_closest_canonical(nib.load(label_path)).dataobj).astype(int)
    pred = np.asarray(nib.as_closest_canonical(nib.load(seg_path)).dataobj).astype(int)
    area = (truth == 2).sum(axis=(0, 1)) * 1000 + (truth == 1).sum(axis=(0, 1))
    k = int(np.argmax(area))
    grey = np.clip((ct[..., k] + 200) / 450, 0, 1)
    grey = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)

    def coloured(label: np.ndarray) -> np.ndarray:
        mix = grey.copy()
        inside = label[..., k] > 0
        mix[inside] = (0.5 * grey[inside] + 0.5 * COLOURS[label[..., k][inside]]).astype(np.uint8)
        return mix

    # RAS arrays, shown as radiologists read axial CT: anterior up, the patient's right on the image's left
    panels = [np.fliplr(np.rot90(p)) for p in (grey, coloured(truth), coloured(pred))]
    Image.fromarray(np.concatenate(panels, axis=1)).save(out_path)


def results_table(summary_path: Path) -> str:
    """Markdown table of the evaluation summary: Dice, HD95, lesion detection, volume errors."""
    s = json.loads(summary_path.read_text())
    rows = ["| metric | mean | std | min | max |", "| --- | --- | --- | --- | --- |"]
    for key, title in (
        ("dice_liver", "liver Dice"),
        ("hd95_liver_mm", "liver HD95 (mm)"),
        ("dice_tumour", "tumour Dice (cases with tumours)"),
        ("tumour_sensitivity", "tumour detection sensitivity"),
        ("false_positive_tumours", "false-positive tumours per case"),
        ("tumour_lesion_dice", "per-tumour Dice"),
    ):
        if key in s:
            v = s[key]
            rows.append(f"| {title} | {v['mean']:.3f} | {v['std']:.3f} | {v['min']:.3f} | {v['max']:.3f} |")
    return "\n".join(rows + [f"\n{s['cases']} held-out cases"])


def main(
    output_dir: str = "demo_liver",
    max_epochs: int = 160,
    val_interval: int = 10,
    num_train: int = 16,
    num_test: int = 4,
    size: int = 160,
    seed: int = 0,
    num_workers: int = 2,
) -> None:
    """Generate synthetic abdominal CT, train, evaluate, segment the test cases, print the tables, write overlays."""
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
    print(results_table(out / "eval" / "metrics_summary.json"))
    print(f"\nSegmentations, measurements.csv and tumours.csv: {out / 'inference'}")
    print(f"Overlays (axial slice: CT | truth | prediction): {out}/overlay_*.png")


if __name__ == "__main__":
    fire.Fire(main)
