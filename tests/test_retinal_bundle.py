"""The retinal vessel bundle's own behaviour (the contract every bundle keeps is in test_bundle_contract.py):
photographs of any size and format, predictions that line up with non-square images, 8-bit mask checks."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image

from conftest import ROOT, segment
from synthetic.retinal import write_image

BUNDLE = ROOT / "bundles" / "retinal_vessel_unet"


@pytest.fixture(scope="module")
def trained(quick_run) -> dict:
    """The bundle's quick demo run: its data set and trained weights."""
    run = quick_run(BUNDLE.name)
    return {"ckpt": run.ckpt, "data": run.data}


def test_inference_takes_photographs_of_any_size_and_format(trained, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    write_image(str(inputs / "large.jpg"), 1500, 1460, seed=1)
    write_image(str(inputs / "tiny.tif"), 60, 50, seed=2)
    shutil.copy(sorted((trained["data"] / "imagesTs").iterdir())[0], inputs / "normal.png")
    segment(BUNDLE, inputs, outputs, trained["ckpt"])
    for stem, ext in (("large", "jpg"), ("tiny", "tif"), ("normal", "png")):
        source = Image.open(inputs / f"{stem}.{ext}")
        for kind in ("seg", "prob"):
            written = Image.open(outputs / f"{stem}_{kind}.png")
            assert written.size == source.size, (stem, kind, written.size, source.size)
            assert written.mode == "L"
        assert set(np.unique(np.asarray(Image.open(outputs / f"{stem}_seg.png")))) <= {0, 255}
        measurements = json.loads((outputs / f"{stem}_measurements.json").read_text())
        assert (measurements["width"], measurements["height"]) == source.size
    assert not [p for p in outputs.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert len((outputs / "measurements.csv").read_text().splitlines()) == 4


def test_prediction_lines_up_with_the_image(trained, tmp_path):
    """A non-square image: the saved segmentation must overlay the vessels, not a transposed copy of them."""
    dataset = trained["data"]
    index = json.loads((dataset / "dataset.json").read_text())
    case = next(c for c in index["test"])
    image = Image.open(dataset / case["image"])
    assert image.size[0] != image.size[1], "test needs a non-square image"
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(dataset / case["image"], inputs / "case.png")
    segment(BUNDLE, inputs, tmp_path / "out", trained["ckpt"])
    pred = np.asarray(Image.open(tmp_path / "out" / "case_seg.png")) > 0
    truth = np.asarray(Image.open(dataset / case["label"])) > 0
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.5


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
    write_image(str(tmp_path / "img.png"), 80, 90, seed=3)
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
