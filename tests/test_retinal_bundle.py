"""The retinal vessel bundle end to end: metadata, network I/O, export, training, evaluation, inference, errors."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image

from conftest import (
    ROOT,
    SCHEMA,
    assert_resumes_one_epoch,
    assert_torchrun_trains_one_epoch,
    assert_torchscript_matches,
    check,
    config_list,
    epoch_losses,
    load_module,
    monai_bundle,
    train_bundle,
)

BUNDLE = ROOT / "bundles" / "retinal_vessel_unet"
synthetic = load_module(BUNDLE / "scripts" / "synthetic.py", "retinal_synthetic_for_bundle_tests")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset: 10 training (8 train + 2 held out) and 2 test photographs of about 128 px."""
    root = tmp_path_factory.mktemp("retinal_data")
    synthetic.write_dataset(str(root), num_train=10, num_test=2, size=128, seed=7)
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> dict:
    """Train the bundle briefly through the CLI; return paths and the training log."""
    return train_bundle(
        BUNDLE,
        dataset,
        tmp_path_factory.mktemp("retinal_run"),
        max_epochs=20,
        val_interval=5,
        num_workers=0,
        samples_per_image=8,
        **{"train#dataloader#batch_size": 2},
    )


def test_metadata_verifies_offline_and_bad_metadata_is_refused(tmp_path):
    meta = BUNDLE / "configs" / "metadata.json"
    out = check(monai_bundle("verify_metadata", meta_file=meta, filepath=SCHEMA))
    assert "verified with no error" in out
    broken = json.loads(meta.read_text())
    del broken["task"]
    broken["network_data_format"]["inputs"]["image"]["num_channels"] = "three"
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    result = monai_bundle("verify_metadata", meta_file=tmp_path / "metadata.json", filepath=SCHEMA)
    assert result.returncode != 0
    assert "Failed validating" in result.stderr + result.stdout


def test_verify_net_in_out():
    out = check(
        monai_bundle(
            "verify_net_in_out",
            "network_def",
            meta_file=BUNDLE / "configs" / "metadata.json",
            config_file=BUNDLE / "configs" / "train.json",
            bundle_root=BUNDLE,
        )
    )
    assert "verified with no error" in out


def test_training_lowers_loss_and_beats_chance(trained, dataset, tmp_path):
    losses = epoch_losses(trained["log"])
    assert len(losses) == 20
    first, last = np.mean(losses[1]), np.mean(losses[max(losses)])
    assert last < 0.7 * first, f"loss went from {first:.3f} to {last:.3f}"
    assert trained["ckpt"].is_file(), "no best checkpoint written"
    assert list((trained["work"] / "train" / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard log"

    check(
        monai_bundle(
            "run",
            config_file=config_list(BUNDLE, "train.json", "evaluate.json"),
            bundle_root=BUNDLE,
            dataset_dir=dataset,
            ckpt_path=trained["ckpt"],
            output_dir=tmp_path,
            num_workers=0,
        )
    )
    summary = json.loads((tmp_path / "metrics_summary.json").read_text())
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert summary["cases"] == 2 and len(rows) == 3
    # the best trivial guesses: all background (Dice 0) or all vessel inside the FOV (Dice = 2p / (1 + p))
    index = json.loads((dataset / "dataset.json").read_text())
    fractions = []
    for case in index["test"]:
        label = np.asarray(Image.open(dataset / case["label"])) > 0
        fov = np.asarray(Image.open(dataset / case["mask"])) > 0
        fractions.append(label[fov].mean())
    all_vessel_dice = max(2 * p / (1 + p) for p in fractions)
    assert summary["dice"]["mean"] > all_vessel_dice + 0.3, (summary["dice"], all_vessel_dice)
    assert summary["auc"]["mean"] > 0.9
    assert 0.0 < summary["cldice"]["mean"] <= 1.0
    for key in ("sensitivity", "specificity", "accuracy"):
        assert 0.5 < summary[key]["mean"] <= 1.0


def test_training_resumes_from_last_checkpoint(trained, dataset):
    assert_resumes_one_epoch(BUNDLE, trained, dataset, 20, val_interval=5, num_workers=0)


def test_ckpt_export_torchscript_matches(trained, tmp_path):
    assert_torchscript_matches(BUNDLE, trained["ckpt"], tmp_path, torch.rand(2, 3, 96, 112))


def test_inference_any_size_and_bad_files_skipped(trained, dataset, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    synthetic.write_image(str(inputs / "large.jpg"), 1500, 1460, seed=1)
    synthetic.write_image(str(inputs / "tiny.tif"), 60, 50, seed=2)
    shutil.copy(dataset / "imagesTs" / sorted(os.listdir(dataset / "imagesTs"))[0], inputs / "normal.png")
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(inputs / "grey.png")
    out = check(
        monai_bundle(
            "run",
            config_file=config_list(BUNDLE, "inference.json"),
            bundle_root=BUNDLE,
            input_dir=inputs,
            output_dir=outputs,
            ckpt_path=trained["ckpt"],
        )
    )
    for stem, ext in (("large", "jpg"), ("tiny", "tif"), ("normal", "png")):
        source = Image.open(inputs / f"{stem}.{ext}")
        for kind in ("seg", "prob"):
            written = Image.open(outputs / f"{stem}_{kind}.png")
            assert written.size == source.size, (stem, kind, written.size, source.size)
            assert written.mode == "L"
        assert set(np.unique(np.asarray(Image.open(outputs / f"{stem}_seg.png")))) <= {0, 255}
        measurements = json.loads((outputs / f"{stem}_measurements.json").read_text())
        assert (measurements["width"], measurements["height"]) == source.size
    assert not list(outputs.glob("corrupt_*")) and not list(outputs.glob("grey_*"))
    assert not [p for p in outputs.iterdir() if p.name.startswith(".")], "temporary files left behind"
    failures = {Path(f["image"]).name: f["error"] for f in json.loads((outputs / "failed_cases.json").read_text())}
    assert set(failures) == {"corrupt.png", "grey.png"}
    assert "corrupt.png" in failures["corrupt.png"]
    assert "grey.png" in failures["grey.png"] and "1 channel(s), expected 3" in failures["grey.png"]
    assert "skipped" in out and "grey.png" in out
    assert len((outputs / "measurements.csv").read_text().splitlines()) == 4


def test_prediction_lines_up_with_the_image(trained, dataset, tmp_path):
    """A non-square image: the saved segmentation must overlay the vessels, not a transposed copy of them."""
    index = json.loads((dataset / "dataset.json").read_text())
    case = next(c for c in index["test"])
    image = Image.open(dataset / case["image"])
    assert image.size[0] != image.size[1], "test needs a non-square image"
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(dataset / case["image"], inputs / "case.png")
    check(
        monai_bundle(
            "run",
            config_file=config_list(BUNDLE, "inference.json"),
            bundle_root=BUNDLE,
            input_dir=inputs,
            output_dir=tmp_path / "out",
            ckpt_path=trained["ckpt"],
        )
    )
    pred = np.asarray(Image.open(tmp_path / "out" / "case_seg.png")) > 0
    truth = np.asarray(Image.open(dataset / case["label"])) > 0
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.5


def test_empty_input_folder_is_reported(tmp_path):
    result = monai_bundle(
        "run",
        config_file=config_list(BUNDLE, "inference.json"),
        bundle_root=BUNDLE,
        input_dir=tmp_path,
        output_dir=tmp_path / "out",
        ckpt_path=tmp_path / "missing.pt",
    )
    assert result.returncode != 0
    assert f"{tmp_path}: input_dir holds no images" in result.stdout + result.stderr


def preprocessing() -> Compose:
    """The bundle's deterministic training preprocessing, as the config builds it."""
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    sys.path.insert(0, str(BUNDLE))
    try:
        return Compose(parser.get_parsed_content("preprocessing"))
    finally:
        sys.path.remove(str(BUNDLE))


def test_label_of_another_size_is_rejected_naming_the_file(tmp_path):
    synthetic.write_image(str(tmp_path / "img.png"), 80, 90, seed=3)
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(tmp_path / "lab.png")
    with pytest.raises(Exception) as err:
        preprocessing()({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "lab.png")})
    message = str(err.value.__cause__ or err.value)
    assert "lab.png" in message and "spatial shape" in message


def test_greyscale_training_image_is_rejected(tmp_path):
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(tmp_path / "lab.png")
    with pytest.raises(Exception) as err:
        preprocessing()({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "lab.png")})
    message = str(err.value.__cause__ or err.value)
    assert "img.png" in message and "expected 3" in message


def test_multi_gpu_config_trains_one_epoch_with_torchrun_gloo(dataset, tmp_path):
    assert_torchrun_trains_one_epoch(BUNDLE, dataset, tmp_path, port=29533)
