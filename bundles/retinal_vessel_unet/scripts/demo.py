"""End-to-end demo of the retinal bundle on synthetic data: generate, train, evaluate, infer, report, overlay.

Every step runs the bundle exactly as a user types it (``python -m monai.bundle run ...``), so the demo also
checks the configs. Run from the repository root::

    python bundles/retinal_vessel_unet/scripts/demo.py --output_dir demo_output --max_epochs 40
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import fire
import numpy as np
from PIL import Image

BUNDLE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUNDLE))

from common.runner import train_evaluate_infer  # noqa: E402
from scripts.synthetic import write_dataset  # noqa: E402

METRICS = ("dice", "sensitivity", "specificity", "accuracy", "auc", "cldice")


def overlay(image_path: str, label_path: str, seg_path: str, out_path: str) -> None:
    """Write image | ground truth | prediction side by side; in the prediction panel, true positives are white,
    false positives red and missed vessel (false negatives) blue."""
    image = np.asarray(Image.open(image_path).convert("RGB"))
    truth = np.asarray(Image.open(label_path).convert("L")) > 0
    pred = np.asarray(Image.open(seg_path).convert("L")) > 0
    gt_panel = np.repeat((truth * 255).astype(np.uint8)[..., None], 3, axis=2)
    pred_panel = np.zeros_like(image)
    pred_panel[pred & truth] = (255, 255, 255)
    pred_panel[pred & ~truth] = (255, 40, 40)
    pred_panel[~pred & truth] = (40, 120, 255)
    Image.fromarray(np.concatenate([image, gt_panel, pred_panel], axis=1)).save(out_path)


def metrics_table(summary_path: Path) -> str:
    """A Markdown table of mean and standard deviation per metric from an evaluation summary JSON."""
    summary = json.loads(summary_path.read_text())
    rows = ["| metric | mean | std |", "| --- | --- | --- |"]
    rows += [f"| {m} | {summary[m]['mean']:.4f} | {summary[m]['std']:.4f} |" for m in METRICS if m in summary]
    return "\n".join(rows + [f"\n{summary['cases']} held-out cases"])


def main(
    output_dir: str = "demo_output",
    max_epochs: int = 40,
    val_interval: int = 10,
    num_train: int = 24,
    num_test: int = 6,
    size: int = 320,
    seed: int = 0,
    num_workers: int = 2,
) -> None:
    """Generate synthetic fundus data, train the bundle, evaluate it, run inference, print metrics, write overlays."""
    out = Path(output_dir).resolve()
    start = time.time()
    index = json.loads(Path(write_dataset(str(out / "data"), num_train, num_test, size, seed)).read_text())
    train_seconds = train_evaluate_infer(
        BUNDLE, out, out / "data", index["test"], max_epochs, val_interval, num_workers
    )
    for case in index["test"][:3]:
        stem = Path(case["image"]).stem
        overlay(
            str(out / "data" / case["image"]),
            str(out / "data" / case["label"]),
            str(out / "inference" / f"{stem}_seg.png"),
            str(out / f"overlay_{stem}.png"),
        )
    print(f"\nTraining: {max_epochs} epochs in {train_seconds:.0f} s; whole demo {time.time() - start:.0f} s")
    print(f"Held-out synthetic test split (inside the field of view), {out / 'eval' / 'metrics.csv'}:\n")
    print(metrics_table(out / "eval" / "metrics_summary.json"))
    print(f"\nSegmentations and measurements: {out / 'inference'}; overlays: {out}/overlay_*.png")


if __name__ == "__main__":
    fire.Fire(main)
