"""One demo for every bundle on its synthetic data: generate, train, evaluate, segment, print the tables, overlay.

Every step runs the bundle exactly as a user types it (``python -m monai.bundle run ...``), so the demo also checks
the configs. From the repository root::

    python -m synthetic.demo retinal_vessel_unet --output_dir demo_output
    python -m synthetic.demo liver_ct_unet3d --output_dir demo_liver --max_epochs 40
    python -m synthetic.demo cardiac_mr_fcn --output_dir demo_cardiac --quick   # a minute: CI's settings

The data set's size and the training length come from the bundle's ``tooling.json`` (``demo``, or ``quick``).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import fire
import nibabel as nib
import numpy as np
from PIL import Image

from common.profile import BundleProfile, describe
from common.runner import train_evaluate_infer
from common.tables import case_stem
from synthetic import write_dataset

#: overlay colours of classes 1, 2, 3, ... (background stays grey)
PALETTE = np.array([(230, 40, 40), (40, 200, 80), (60, 120, 255), (250, 210, 40), (200, 80, 220)], np.float32)


def _first_file(image: str | list[str]) -> str:
    """The file of a case's first channel (a multimodal case lists one file per modality)."""
    return image[0] if isinstance(image, (list, tuple)) else image


def _grey(image: np.ndarray) -> np.ndarray:
    """An image scaled to 0..255 between its 1st and 99th percentiles, as RGB."""
    low, high = np.percentile(image, [1, 99]) if image.ndim == 2 else (0.0, 255.0)
    grey = np.clip((image.astype(np.float32) - low) / max(high - low, 1e-6), 0, 1) * 255
    return np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey


def _classes(values: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices of a label map; 8-bit masks (0/255) of a binary task become 0/1."""
    values = np.asarray(values)
    return (values > 0).astype(np.int64) if values.max(initial=0) > num_classes - 1 else values.astype(np.int64)


def _coloured(grey: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The grey image with each foreground class blended in its palette colour."""
    mix = grey.astype(np.float32).copy()
    for c in range(1, int(classes.max(initial=0)) + 1):
        inside = classes == c
        mix[inside] = 0.45 * mix[inside] + 0.55 * PALETTE[(c - 1) % len(PALETTE)]
    return mix.astype(np.uint8)


def _planes(profile: BundleProfile, image: Path, label: Path, seg: Path) -> tuple[np.ndarray, ...]:
    """Image (RGB, 0..255), truth and prediction classes of one plane: the photograph itself, or the axial slice
    of a volume (RAS, radiological display) holding the most foreground of the truth."""
    n = len(profile.classes)
    if profile.image_dims == 2:
        rgb = np.asarray(Image.open(image).convert("RGB"))
        return rgb, _classes(np.asarray(Image.open(label).convert("L")), n), _classes(np.asarray(Image.open(seg)), n)
    volumes = [np.asarray(nib.as_closest_canonical(nib.load(p)).dataobj) for p in (image, label, seg)]
    volumes[0] = volumes[0][..., 0] if volumes[0].ndim == 4 else volumes[0]
    k = int(np.argmax((volumes[1] > 0).sum(axis=(0, 1))))
    planes = [np.fliplr(np.rot90(v[..., k])) for v in volumes]  # anterior up, the patient's right on the left
    return _grey(planes[0]), _classes(planes[1], n), _classes(planes[2], n)


def overlay(profile: BundleProfile, image: Path, label: Path, seg: Path, out_path: Path) -> None:
    """Write image | ground truth | prediction side by side as a PNG."""
    grey, truth, pred = _planes(profile, image, label, seg)
    panels = [grey.astype(np.uint8), _coloured(grey, truth), _coloured(grey, pred)]
    Image.fromarray(np.concatenate(panels, axis=1)).save(out_path)


def summary_table(summary_path: Path) -> str:
    """A Markdown table of the mean, standard deviation, minimum and maximum of every metric of a summary."""
    summary = json.loads(summary_path.read_text())
    rows = ["| metric | mean | std | min | max |", "| --- | --- | --- | --- | --- |"]
    for key, value in summary.items():
        if isinstance(value, dict) and "mean" in value:
            rows.append(
                f"| {key} | "
                + " | ".join(f"{value.get(s, float('nan')):.4f}" for s in ("mean", "std", "min", "max"))
                + " |"
            )
    return "\n".join(rows + [f"\n{summary.get('cases', '?')} held-out cases"])


def csv_table(path: Path, max_rows: int = 12) -> str:
    """A CSV file as a Markdown table (its first ``max_rows`` rows)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return "(empty)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows[:max_rows]]
    return "\n".join(lines + ([f"({len(rows) - max_rows} more rows)"] if len(rows) > max_rows else []))


def segmentation_path(profile: BundleProfile, inference_dir: Path, case: dict[str, Any]) -> Path:
    """Where inference writes the segmentation of a data-list case: ``<stem>_seg.<ext>``."""
    image = _first_file(case["image"])
    stem = case_stem(image)
    if profile.is_multimodal and isinstance(case["image"], (list, tuple)):
        stem = stem.rsplit("_", 1)[0]  # <case>_0000 -> <case>
    ext = profile.output_ext or Path(image).name[len(case_stem(image)) :]
    return inference_dir / f"{stem}_seg{ext}"


def run_demo(
    bundle: str,
    output_dir: str = "demo_output",
    quick: bool = False,
    max_epochs: int | None = None,
    val_interval: int | None = None,
    num_train: int | None = None,
    num_test: int | None = None,
    seed: int | None = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Generate synthetic data for ``bundle``, train, evaluate, segment the test cases, print the tables and write
    overlays; return the paths and timings (``out``, ``data``, ``ckpt``, ``train_seconds``). Options left at None
    take the bundle's ``demo`` settings (``quick`` ones with ``quick=True``) from its ``tooling.json``."""
    profile = describe(bundle)
    settings = profile.quick if quick else profile.demo

    def chosen(**options: Any) -> dict[str, Any]:
        return {k: v for k, v in options.items() if v is not None}

    out = Path(output_dir).resolve()
    start = time.time()
    data_options = {**settings["data"], **chosen(num_train=num_train, num_test=num_test, seed=seed)}
    index = json.loads(Path(write_dataset(profile.task, out / "data", **data_options)).read_text())
    overrides = {**settings.get("overrides", {}), **chosen(num_workers=num_workers)}
    train = {**settings["train"], **chosen(max_epochs=max_epochs, val_interval=val_interval)}
    train_seconds = train_evaluate_infer(profile.root, out, out / "data", index["test"], train, overrides)
    for case in index["test"][:3]:
        seg = segmentation_path(profile, out / "inference", case)
        overlay(profile, out / "data" / _first_file(case["image"]), out / "data" / case["label"], seg,
                out / f"overlay_{case_stem(seg.name).removesuffix('_seg')}.png")  # fmt: skip
    seconds = time.time() - start
    print(f"\n{profile.name}: {train['max_epochs']} epochs in {train_seconds:.0f} s; whole demo {seconds:.0f} s")
    print(f"Held-out synthetic test cases, scored in each case's own grid ({out / 'eval'}):\n")
    print(summary_table(out / "eval" / "metrics_summary.json"))
    for folder in (out / "eval", out / "inference"):
        for table in sorted(folder.glob("*.csv")):
            if table.name != "metrics.csv":
                print(f"\n{table}:\n\n{csv_table(table)}")
    print(f"\nSegmentations and measurements: {out / 'inference'}")
    print(f"Overlays (image | truth | prediction): {out}/overlay_*.png")
    return {"out": out, "data": out / "data", "ckpt": out / "models" / "model.pt", "train_seconds": train_seconds}


if __name__ == "__main__":
    fire.Fire(run_demo, serialize=lambda _: None)  # the tables are printed; the returned paths are for callers
