"""Run a bundle exactly as a user types it, ``python -m monai.bundle run ...``, from the demo and the benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def bundle_command(bundle: str | Path, configs: Sequence[str], **overrides: object) -> list[str]:
    """The command line running ``configs`` (file names in ``bundle/configs``, merged in order) with overrides."""
    bundle = Path(bundle)
    files = [str(bundle / "configs" / name) for name in configs]
    config_arg = files[0] if len(files) == 1 else str(files)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg, "--bundle_root", str(bundle)]
    if (bundle / "configs" / "logging.conf").is_file():
        cmd += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def run_bundle(bundle: str | Path, configs: Sequence[str], **overrides: object) -> None:
    """Print and run a bundle command, raising ``CalledProcessError`` when it fails."""
    cmd = bundle_command(bundle, configs, **overrides)
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def train_evaluate_infer(
    bundle: str | Path,
    out: Path,
    dataset_dir: Path,
    test_cases: Sequence[dict],
    train_overrides: Mapping[str, object],
    overrides: Mapping[str, object] | None = None,
) -> float:
    """The demo pipeline, every step a bundle command: train, evaluate on the test split, segment the test images.

    ``train_overrides`` (e.g. ``max_epochs``) go to training only, ``overrides`` (e.g. ``num_workers``, a coarser
    ``target_spacing``) to every step. Writes ``out/models/model.pt``, ``out/train``, ``out/eval`` (per-case
    metrics) and ``out/inference`` (segmentations of the test images, copied first to ``out/test_images`` as a
    user's input folder would hold them, every modality file of a case). Returns the training time in seconds.
    """
    common = {"ckpt_path": out / "models" / "model.pt", **(overrides or {})}
    start = time.time()
    run_bundle(bundle, ["train.json"], dataset_dir=dataset_dir, output_dir=out / "train", **common, **train_overrides)
    train_seconds = time.time() - start
    run_bundle(bundle, ["train.json", "evaluate.json"], dataset_dir=dataset_dir, output_dir=out / "eval", **common)
    test_images = out / "test_images"
    test_images.mkdir(parents=True, exist_ok=True)
    for case in test_cases:
        for image in case["image"] if isinstance(case["image"], (list, tuple)) else [case["image"]]:
            shutil.copy(dataset_dir / image, test_images / Path(image).name)
    run_bundle(bundle, ["inference.json"], input_dir=test_images, output_dir=out / "inference", **common)
    return train_seconds
