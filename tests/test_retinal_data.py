"""The retinal bundle's data scripts: synthetic fundus photographs and the DRIVE conversion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.transforms import LoadImage
from PIL import Image

from conftest import ROOT, load_module
from synthetic import retinal as synthetic

SCRIPTS = ROOT / "bundles" / "retinal_vessel_unet" / "scripts"
prepare_drive = load_module(SCRIPTS / "prepare_drive.py", "retinal_prepare_drive")
load = LoadImage(reader="PILReader", image_only=True)


def test_synthetic_dataset_layout_and_content(tmp_path):
    index = json.loads(Path(synthetic.write_dataset(str(tmp_path), num_train=3, num_test=1, size=128)).read_text())
    assert len(index["training"]) == 3 and len(index["test"]) == 1
    assert index["labels"] == {"0": "background", "1": "vessel"}
    for case in index["training"] + index["test"]:
        image = np.asarray(Image.open(tmp_path / case["image"]))
        label = np.asarray(Image.open(tmp_path / case["label"]))
        fov = np.asarray(Image.open(tmp_path / case["mask"])) > 0
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        assert label.shape == fov.shape == image.shape[:2]
        assert set(np.unique(label)) <= {0, 255}
        vessels = label > 0
        assert not (vessels & ~fov).any(), "vessel outside the field of view"
        assert 0.04 < vessels[fov].mean() < 0.25
        green = image[..., 1].astype(float)
        assert green[fov & ~vessels].mean() - green[vessels].mean() > 10, "vessels must be darker in green"
        assert image[~fov].max() < 30, "outside the field of view is dark"
    assert load(str(tmp_path / index["training"][0]["image"])).shape[-1] == 3


def test_synthetic_is_deterministic_per_seed():
    a, _, _ = synthetic.generate_fundus(96, 112, seed=5)
    b, _, _ = synthetic.generate_fundus(96, 112, seed=5)
    c, _, _ = synthetic.generate_fundus(96, 112, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_write_image_any_size_and_format(tmp_path):
    for name, (height, width) in {"small.png": (60, 50), "wide.jpg": (70, 130), "x.tif": (40, 41)}.items():
        synthetic.write_image(str(tmp_path / name), height, width, seed=1)
        image = Image.open(tmp_path / name)
        assert image.size == (width, height) and image.mode == "RGB"


def write_drive_tree(root: Path, with_test_manual: tuple[str, ...] = ("01",)) -> None:
    """A tiny tree in DRIVE's exact download layout: 2 training and 2 test cases of 40x44 pixels."""
    rng = np.random.default_rng(0)
    for split, ids, suffix in (("training", ("21", "22"), "_training"), ("test", ("01", "02"), "_test")):
        for folder in ("images", "1st_manual", "mask"):
            (root / "DRIVE" / split / folder).mkdir(parents=True, exist_ok=True)
        for case in ids:
            Image.fromarray(rng.integers(0, 255, (44, 40, 3), dtype=np.uint8)).save(
                root / "DRIVE" / split / "images" / f"{case}{suffix}.tif"
            )
            binary = (rng.random((44, 40)) > 0.8).astype(np.uint8) * 255
            if split == "training" or case in with_test_manual:
                Image.fromarray(binary).convert("P").save(root / "DRIVE" / split / "1st_manual" / f"{case}_manual1.gif")
            Image.fromarray(np.full((44, 40), 255, np.uint8)).save(
                root / "DRIVE" / split / "mask" / f"{case}{suffix}_mask.gif"
            )


def test_prepare_drive_converts_the_download_layout(tmp_path):
    write_drive_tree(tmp_path / "download")
    path = prepare_drive.prepare_drive(str(tmp_path / "download"), str(tmp_path / "out"))
    index = json.loads(Path(path).read_text())
    assert [Path(c["image"]).name for c in index["training"]] == ["21_training.tif", "22_training.tif"]
    for case in index["training"]:
        assert set(case) == {"image", "label", "mask"}
        image, label = load(str(tmp_path / "out" / case["image"])), load(str(tmp_path / "out" / case["label"]))
        assert tuple(image.shape) == (40, 44, 3)  # PILReader: width, height, channels
        assert tuple(label.shape) == (40, 44) and float(label.max()) > 0
        assert tuple(load(str(tmp_path / "out" / case["mask"])).shape) == (40, 44)
    tests = {Path(c["image"]).name: c for c in index["test"]}
    assert set(tests) == {"01_test.tif", "02_test.tif"}
    assert "label" in tests["01_test.tif"] and "label" not in tests["02_test.tif"]
    assert "mask" in tests["02_test.tif"]


def test_prepare_drive_names_a_missing_manual(tmp_path):
    write_drive_tree(tmp_path / "download")
    (tmp_path / "download" / "DRIVE" / "training" / "1st_manual" / "22_manual1.gif").unlink()
    with pytest.raises(FileNotFoundError, match="22_manual1.gif"):
        prepare_drive.prepare_drive(str(tmp_path / "download"), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "dataset.json").exists(), "nothing is written when the input is incomplete"
    with pytest.raises(FileNotFoundError, match="training images folder"):
        prepare_drive.prepare_drive(str(tmp_path / "nowhere"), str(tmp_path / "out2"))
