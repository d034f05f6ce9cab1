"""The brain tissue bundle's own behaviour (the contract every bundle keeps is in test_bundle_contract.py): class-
balanced patches, dense inference equal to patch-by-patch, true tissue volumes, modalities grouped per case."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from conftest import ROOT, QuickRun, load_module, read_csv, segment
from synthetic.brain import generate_subject

BUNDLE = ROOT / "bundles" / "brain_tissue_cnn2d"
measure = load_module(ROOT / "benchmarks" / "dense_speedup.py", "benchmark_dense_speedup").measure


@pytest.fixture(scope="module")
def run(quick_run) -> QuickRun:
    """The bundle's quick demo run: data, weights, evaluation (``out/eval``) and inference (``out/inference``)."""
    return quick_run(BUNDLE.name)


def parser_of(*names: str) -> ConfigParser:
    """A parser of the bundle's configs (merged in order) with the bundle root set."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / n) for n in names])
    parser["bundle_root"] = str(BUNDLE)
    return parser


def test_patches_are_class_balanced_and_labelled_by_their_centre(run):
    parser = parser_of("train.json")
    parser["dataset_dir"] = str(run.data)
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


def test_dense_inference_equals_patch_by_patch_with_trained_weights(run):
    parser = parser_of("train.json")
    parser["dataset_dir"] = str(run.data)
    image = Compose(parser.get_parsed_content("preprocessing"))(parser.get_parsed_content("val_datalist")[0])["image"]
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(run.ckpt, map_location="cpu", weights_only=True))
    middle = image[None, ..., image.shape[-1] // 2].as_tensor()[:, :, 10:50, 12:44]  # a real slice, 40 x 32
    result = measure(network, middle, repeats=1)
    assert result["max_abs_score_difference"] < 1e-3
    assert result["label_agreement"] == 1.0


def test_evaluation_reports_hd95_and_true_volumes(run):
    dataset = run.data
    (row,) = read_csv(run.out / "eval" / "metrics.csv")
    assert row["case"] == "subject005"
    for name in ("csf", "gm", "wm"):
        assert 0 < float(row[f"hd95_{name}_mm"]) < 20
    # true volumes are measured in the subject's own grid, by hand here
    label = nib.load(dataset / "labelsTs" / "subject005.nii.gz")
    voxel_ml = abs(np.linalg.det(label.affine[:3, :3])) / 1000
    values = np.asarray(label.dataobj)
    for name, index in (("csf", 1), ("gm", 2), ("wm", 3)):
        assert float(row[f"true_{name}_ml"]) == pytest.approx((values == index).sum() * voxel_ml, rel=1e-6)
    assert float(row["true_intracranial_ml"]) == pytest.approx((values > 0).sum() * voxel_ml, rel=1e-6)


def test_inference_groups_modalities_keeps_the_grid_and_skips_bad_cases(run, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    dataset = run.data
    entry = run.index["test"][0]
    for path in entry["image"]:  # subject005_0000 .. _0002: one case
        (inputs / Path(path).name).write_bytes((dataset / path).read_bytes())
    # the same subject as one 4D file: the same segmentation is expected
    stacked = np.stack([np.asarray(nib.load(dataset / p).dataobj) for p in entry["image"]], axis=-1)
    affine = nib.load(dataset / entry["label"]).affine
    nib.save(nib.Nifti1Image(stacked, affine), inputs / "four_d.nii.gz")
    # a case whose FLAIR lies on another grid, a case with two modalities only, a 2D image
    images, _, other_affine = generate_subject(7, size=48)
    for c, data in enumerate(images):
        nib.save(
            nib.Nifti1Image(data, other_affine if c < 2 else other_affine * 1.1), inputs / f"misaligned_{c:04d}.nii.gz"
        )
    for c, data in enumerate(images[:2]):
        nib.save(nib.Nifti1Image(data, other_affine), inputs / f"twomod_{c:04d}.nii.gz")
    nib.save(nib.Nifti1Image(images[0][..., 0], other_affine), inputs / "flat.nii.gz")
    out = segment(BUNDLE, inputs, outputs, run.ckpt, failures=3)
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


def test_inference_network_runs_densely_on_any_size():
    x = torch.randn(2, 3, 45, 38)
    assert parser_of("inference.json").get_parsed_content("network_def")(x).shape == (2, 4, 45, 38)


def write(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    """Save a NIfTI file and return its path."""
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


@pytest.mark.parametrize(
    "case, culprit, message",
    [
        ("image_2d", "m_0000.nii.gz", "expected 3"),
        ("missing_modality", "m_0001.nii.gz", "expected 3"),
        ("other_grid", "m_0001.nii.gz", "one grid"),
        ("other_shape", "m_0001.nii.gz", "one grid"),
        ("unreadable", "m_0001.nii.gz", "cannot be read"),
    ],
)
def test_bad_modalities_are_rejected_naming_the_file(tmp_path, case, culprit, message):
    images, label, affine = generate_subject(3, size=40)
    images = [i.copy() for i in images]
    if case == "image_2d":
        images = [i[..., 0] for i in images]
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
