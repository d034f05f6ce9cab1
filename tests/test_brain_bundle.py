"""The brain tissue bundle end to end: metadata, patch training, dense evaluation, inference, volumes, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from conftest import (
    ROOT,
    assert_bundle_verifies,
    assert_resumes_one_epoch,
    assert_torchrun_trains_one_epoch,
    assert_torchscript_matches,
    check,
    config_list,
    epoch_losses,
    load_module,
    monai_bundle,
    read_csv,
    train_bundle,
)

BUNDLE = ROOT / "bundles" / "brain_tissue_cnn2d"
synthetic = load_module(BUNDLE / "scripts" / "synthetic.py", "brain_synthetic_for_bundle_tests")
speedup = load_module(BUNDLE / "scripts" / "dense_speedup.py", "brain_dense_speedup_for_bundle_tests")
EPOCHS = 12
SMALL = {"num_workers": 0, "patches_per_volume": 128}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 training subjects (4 train + 1 held out) and 1 test subject, 64 x 64 pixels, T1, T2 and FLAIR."""
    root = tmp_path_factory.mktemp("brain_data")
    synthetic.write_dataset(str(root), num_train=5, num_test=1, size=64, seed=21)
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> dict:
    """Train the bundle briefly through the CLI; return paths and the training log."""
    work = tmp_path_factory.mktemp("brain_run")
    return train_bundle(BUNDLE, dataset, work, max_epochs=EPOCHS, val_interval=4, learning_rate=0.002, **SMALL)


def parser_of(*names: str) -> ConfigParser:
    """A parser of the bundle's configs (merged in order) with the bundle root set."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / n) for n in names])
    parser["bundle_root"] = str(BUNDLE)
    return parser


def test_metadata_verifies_offline_and_dense_network_matches_it():
    assert_bundle_verifies(BUNDLE, "inference.json", any=37)


def test_training_lowers_loss_and_beats_chance(trained):
    losses = epoch_losses(trained["log"])
    assert len(losses) == EPOCHS
    first, last = np.mean(losses[1]), np.mean(losses[EPOCHS])
    assert last < 0.6 * first, f"loss went from {first:.3f} to {last:.3f}"  # cross-entropy starts near ln 4
    dice = [float(d) for d in re.findall(r"Metrics -- val_mean_dice: ([0-9.]+)", trained["log"])]
    assert len(dice) == EPOCHS // 4 and max(dice) > 0.5, dice
    assert trained["ckpt"].is_file(), "no best checkpoint written"
    assert list((trained["work"] / "train" / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard log"


def test_patches_are_class_balanced_and_labelled_by_their_centre(dataset):
    parser = parser_of("train.json")
    parser["dataset_dir"] = str(dataset)
    parser["patches_per_volume"] = 400
    content = parser.get_parsed_content
    transforms = content("preprocessing") + content("train#deterministic_transforms")
    case = Compose(transforms)(content("train_datalist")[0])
    case["image"] = case["label"].repeat(3, 1, 1, 1)  # an image equal to the label: a patch's centre shows its class
    patches = content("train#patch_sampler")(case)
    assert len(patches) == 400
    assert all(p["image"].shape == (3, 33, 33) and p["label"].shape == () for p in patches)
    assert all(p["label"].dtype == torch.long for p in patches)
    counts = np.bincount([int(p["label"]) for p in patches], minlength=4)
    assert counts.min() >= 60, f"classes not balanced: {counts}"  # 100 expected per class
    # flips and 90-degree rotations keep the centre in place; the intensity jitter is below 0.5
    assert all(round(float(p["image"][0, 16, 16])) == int(p["label"]) for p in patches)


def test_dense_inference_equals_patch_by_patch_with_trained_weights(trained, dataset):
    parser = parser_of("train.json")
    parser["dataset_dir"] = str(dataset)
    image = Compose(parser.get_parsed_content("preprocessing"))(parser.get_parsed_content("val_datalist")[0])["image"]
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(trained["ckpt"], map_location="cpu", weights_only=True))
    middle = image[None, ..., image.shape[-1] // 2].as_tensor()[:, :, 10:50, 12:44]  # a real slice, 40 x 32
    result = speedup.measure(network, middle, repeats=1)
    assert result["max_abs_score_difference"] < 1e-3
    assert result["label_agreement"] == 1.0


def test_evaluation_reports_dice_hd95_and_true_volumes(trained, dataset, tmp_path):
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
    (row,) = read_csv(tmp_path / "metrics.csv")
    assert row["case"] == "subject005"
    # chance: a map with the class frequencies but no spatial information has Dice equal to the class's share of
    # the volume (under 15 % for every tissue here); a short training run must be far above it
    for name in ("csf", "gm", "wm"):
        assert float(row[f"dice_{name}"]) > 0.4, (name, row)
        assert 0 < float(row[f"hd95_{name}_mm"]) < 20
    # true volumes are measured in the subject's own grid, by hand here
    label = nib.load(dataset / "labelsTs" / "subject005.nii.gz")
    voxel_ml = abs(np.linalg.det(label.affine[:3, :3])) / 1000
    values = np.asarray(label.dataobj)
    for name, index in (("csf", 1), ("gm", 2), ("wm", 3)):
        assert float(row[f"true_{name}_ml"]) == pytest.approx((values == index).sum() * voxel_ml, rel=1e-6)
    assert float(row["true_intracranial_ml"]) == pytest.approx((values > 0).sum() * voxel_ml, rel=1e-6)


def test_inference_groups_modalities_keeps_the_grid_and_skips_bad_cases(trained, dataset, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    entry = json.loads((dataset / "dataset.json").read_text())["test"][0]
    for path in entry["image"]:  # subject005_0000 .. _0002: one case
        (inputs / Path(path).name).write_bytes((dataset / path).read_bytes())
    # the same subject as one 4D file: the same segmentation is expected
    stacked = np.stack([np.asarray(nib.load(dataset / p).dataobj) for p in entry["image"]], axis=-1)
    affine = nib.load(dataset / entry["label"]).affine
    nib.save(nib.Nifti1Image(stacked, affine), inputs / "four_d.nii.gz")
    # a case whose FLAIR lies on another grid, a case with two modalities only, a 2D image
    images, _, other_affine = synthetic.generate_subject(7, size=48)
    for c, data in enumerate(images):
        nib.save(
            nib.Nifti1Image(data, other_affine if c < 2 else other_affine * 1.1), inputs / f"misaligned_{c:04d}.nii.gz"
        )
    for c, data in enumerate(images[:2]):
        nib.save(nib.Nifti1Image(data, other_affine), inputs / f"twomod_{c:04d}.nii.gz")
    nib.save(nib.Nifti1Image(images[0][..., 0], other_affine), inputs / "flat.nii.gz")
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
    written = sorted(p.name for p in outputs.glob("*_seg.nii.gz"))
    assert written == ["four_d_seg.nii.gz", "subject005_seg.nii.gz"]
    label = nib.load(dataset / entry["label"])
    segs = {}
    for name in written:
        seg = nib.load(outputs / name)
        assert seg.shape == label.shape, name
        np.testing.assert_allclose(seg.affine, label.affine, atol=1e-4, err_msg=name)
        assert seg.get_data_dtype() == np.uint8
        segs[name] = np.asarray(seg.dataobj)
    np.testing.assert_array_equal(segs["four_d_seg.nii.gz"], segs["subject005_seg.nii.gz"])
    failures = {f["image"]: f["error"] for f in json.loads((outputs / "failed_cases.json").read_text())}
    assert len(failures) == 3, failures
    misaligned = next(e for k, e in failures.items() if "misaligned" in k)
    assert "misaligned_0002.nii.gz" in misaligned and "one grid" in misaligned
    twomod = next(e for k, e in failures.items() if "twomod" in k)
    assert "twomod_0000.nii.gz" in twomod and "expected 3" in twomod
    flat = next(e for k, e in failures.items() if "flat" in k)
    assert "flat.nii.gz" in flat and "expected 3" in flat
    assert "skipped" in out
    assert not [p for p in outputs.iterdir() if p.name.startswith(".")], "temporary files left behind"
    volumes = {r["case"]: r for r in read_csv(outputs / "tissue_volumes.csv")}
    assert set(volumes) == {"four_d", "subject005"}
    voxel_ml = abs(np.linalg.det(label.affine[:3, :3])) / 1000
    seg = segs["subject005_seg.nii.gz"]
    for name, index in (("csf", 1), ("gm", 2), ("wm", 3)):
        assert float(volumes["subject005"][f"{name}_ml"]) == pytest.approx((seg == index).sum() * voxel_ml, rel=1e-6)
    assert json.loads((outputs / "subject005_tissue_volumes.json").read_text())["case"] == "subject005"


def test_training_resumes_from_last_checkpoint(trained, dataset):
    assert_resumes_one_epoch(BUNDLE, trained, dataset, EPOCHS, val_interval=4, **SMALL)


def test_ckpt_export_torchscript_runs_densely(trained, tmp_path):
    x = torch.randn(2, 3, 45, 38)
    assert parser_of("inference.json").get_parsed_content("network_def")(x).shape == (2, 4, 45, 38)  # dense mode
    assert_torchscript_matches(BUNDLE, trained["ckpt"], tmp_path, x, config="inference.json")


def write(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    """Save a NIfTI file and return its path."""
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


@pytest.mark.parametrize(
    "case, culprit, message",
    [
        ("label_values", "lab.nii.gz", "outside the classes 0..3"),
        ("label_shape", "lab.nii.gz", "spatial shape"),
        ("image_2d", "m_0000.nii.gz", "expected 3"),
        ("missing_modality", "m_0001.nii.gz", "expected 3"),
        ("other_grid", "m_0001.nii.gz", "one grid"),
        ("other_shape", "m_0001.nii.gz", "one grid"),
        ("nan", "m_0000.nii.gz", "NaN"),
        ("unreadable", "m_0001.nii.gz", "cannot be read"),
    ],
)
def test_bad_training_cases_are_rejected_naming_the_file(tmp_path, case, culprit, message):
    images, label, affine = synthetic.generate_subject(3, size=40)
    images = [i.copy() for i in images]
    if case == "label_values":
        label = label.copy()
        label[0, 0, 0] = 7
    elif case == "label_shape":
        label = label[:, :-2]
    elif case == "image_2d":
        images = [i[..., 0] for i in images]
    elif case == "nan":
        images[0][5, 5, 5] = np.nan
    paths = [write(tmp_path / f"m_{c:04d}.nii.gz", data, affine) for c, data in enumerate(images)]
    if case == "missing_modality":
        paths = paths[:2]
    elif case == "other_grid":
        shifted = affine.copy()
        shifted[:3, 3] += 2.0
        write(tmp_path / "m_0001.nii.gz", images[1], shifted)
    elif case == "other_shape":
        write(tmp_path / "m_0001.nii.gz", images[1][:-1], affine)
    elif case == "unreadable":
        (tmp_path / "m_0001.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    data = {"image": paths, "label": write(tmp_path / "lab.nii.gz", label, affine)}
    with pytest.raises(Exception) as err:
        Compose(parser_of("train.json").get_parsed_content("preprocessing"))(data)
    text = str(err.value.__cause__ or err.value)
    assert culprit in text and message in text, text


def test_multi_gpu_config_trains_one_epoch_with_torchrun_gloo(dataset, tmp_path):
    # every rank needs a validation case: two of the training subjects, with absolute paths
    index = json.loads((dataset / "dataset.json").read_text())
    absolute = [
        {**e, "image": [str(dataset / p) for p in e["image"]], "label": str(dataset / e["label"])}
        for e in index["training"]
    ]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": absolute[:3], "validation": absolute[3:]}))
    assert_torchrun_trains_one_epoch(BUNDLE, tmp_path, tmp_path, port=29536, patches_per_volume=64)
