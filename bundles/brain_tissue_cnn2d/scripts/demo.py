"""End-to-end demo of the brain tissue bundle on synthetic data: generate, train, evaluate, infer, report, overlay.

Every step runs the bundle as a user types it (``python -m monai.bundle run ...``); then the trained patch CNN is
timed densely against patch by patch on a 256x256 slice. Run from the repository root::

    python bundles/brain_tissue_cnn2d/scripts/demo.py --output_dir demo_brain
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import torch
from PIL import Image

BUNDLE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BUNDLE))

from common.networks import PatchCNN  # noqa: E402
from common.runner import train_evaluate_infer  # noqa: E402
from scripts.dense_speedup import report  # noqa: E402
from scripts.synthetic import write_dataset  # noqa: E402

#: label colours of the overlays: CSF blue, grey matter green, white matter yellow
COLOURS = np.array([[0, 0, 0], [40, 120, 255], [40, 200, 60], [250, 220, 60]], np.uint8)
TITLES = {"csf": "CSF", "gm": "grey matter", "wm": "white matter"}


def overlay(image_path: Path, label_path: Path, seg_path: Path, out_path: Path) -> None:
    """Write the middle slice as first modality | ground truth | prediction (tissues coloured over the image)."""
    image = np.asarray(nib.load(image_path).dataobj, np.float32)
    truth = np.asarray(nib.load(label_path).dataobj).astype(int)
    pred = np.asarray(nib.load(seg_path).dataobj).astype(int)
    k = image.shape[2] // 2
    grey = np.clip(image[..., k] / np.percentile(image, 99.5), 0, 1)
    grey = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)

    def coloured(label: np.ndarray) -> np.ndarray:
        mix = grey.copy()
        inside = label[..., k] > 0
        mix[inside] = (0.4 * grey[inside] + 0.6 * COLOURS[label[..., k][inside]]).astype(np.uint8)
        return mix

    Image.fromarray(np.concatenate([grey, coloured(truth), coloured(pred)], axis=1)).save(out_path)


def results_table(summary_path: Path) -> str:
    """Markdown table of Dice and HD95 per tissue, and the mean absolute volume error, from the evaluation."""
    summary = json.loads(summary_path.read_text())
    rows = ["| tissue | Dice mean | Dice std | HD95 mean (mm) | HD95 std (mm) |", "| --- | --- | --- | --- | --- |"]
    for name, title in TITLES.items():
        dice, hd = summary[f"dice_{name}"], summary[f"hd95_{name}_mm"]
        rows.append(f"| {title} | {dice['mean']:.3f} | {dice['std']:.3f} | {hd['mean']:.2f} | {hd['std']:.2f} |")
    return "\n".join(rows + [f"\n{summary['cases']} held-out subjects"])


def main(
    output_dir: str = "demo_brain",
    max_epochs: int = 200,
    val_interval: int = 20,
    num_train: int = 12,
    num_test: int = 3,
    seed: int = 0,
    num_workers: int = 2,
) -> None:
    """Generate synthetic multimodal heads, train, evaluate, segment the test subjects, time dense inference."""
    out = Path(output_dir).resolve()
    start = time.time()
    index = json.loads(Path(write_dataset(str(out / "data"), num_train, num_test, None, seed)).read_text())
    train_seconds = train_evaluate_infer(
        BUNDLE, out, out / "data", index["test"], max_epochs, val_interval, num_workers
    )
    for case in index["test"]:
        subject = case["subject"]
        overlay(
            out / "data" / case["image"][0],
            out / "data" / case["label"],
            out / "inference" / f"{subject}_seg.nii.gz",
            out / f"overlay_{subject}.png",
        )
    network = PatchCNN(len(index["modality"]), 4, dropout=0.25)
    network.load_state_dict(torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True))
    print(f"\nTraining: {max_epochs} epochs in {train_seconds:.0f} s; whole demo {time.time() - start:.0f} s")
    print(f"Held-out synthetic test subjects, in each subject's own grid ({out / 'eval'}):\n")
    print(results_table(out / "eval" / "metrics_summary.json"))
    print("\nDense against patch-by-patch inference of the trained network:")
    report(network, 256, len(index["modality"]))
    print(f"\nSegmentations and tissue_volumes.csv (mL): {out / 'inference'}")
    print(f"Overlays (middle slice: T1 | truth | prediction): {out}/overlay_*.png")


if __name__ == "__main__":
    fire.Fire(main)
