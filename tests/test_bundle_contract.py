"""The contract every bundle keeps (docs/design.md), checked on each bundle through its quick demo run: metadata
and network verify offline, a tiny training lowers the loss and beats chance Dice, evaluation writes per-case and
summary metrics, inference writes every output in the input's grid and skips bad files, training resumes, the
TorchScript export matches, the bundle exports and verifies, torchrun trains. What the tests need to know about a
bundle comes from ``common.profile.describe``: nothing here branches on a bundle's name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from common.review import review_flag, review_summary, rules_of
from common.training_statistics import TrainingStatistics
from conftest import (
    BUNDLE_NAMES,
    ROOT,
    QuickRun,
    assert_bundle_verifies,
    assert_resumes_one_epoch,
    assert_torchrun_trains_one_epoch,
    assert_torchscript_matches,
    check,
    epoch_losses,
    read_csv,
    training_preprocessing,
)
from synthetic.demo import segmentation_path

pytestmark = pytest.mark.filterwarnings("ignore:Detected deprecated name 'optional_packages_version'")


@pytest.fixture(params=BUNDLE_NAMES)
def run(request, quick_run) -> QuickRun:
    """The bundle's quick demo run (made once per session)."""
    return quick_run(request.param)


def files_of(image: str | list[str]) -> list[str]:
    """The files of a data-list image entry (one per modality for a multimodal case)."""
    return list(image) if isinstance(image, (list, tuple)) else [image]


def read_grid(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixel values and affine of a NIfTI file, or pixel values (and no affine) of a photograph or 8-bit mask."""
    if path.name.endswith((".nii", ".nii.gz")):
        image = nib.load(path)
        return np.asarray(image.dataobj), image.affine
    return np.asarray(Image.open(path)), None


def test_metadata_and_network_verify_offline(run):
    check_ = run.profile.network_check
    assert_bundle_verifies(run.profile.root, check_["config"], **check_.get("options", {}))


def test_quick_training_lowers_the_loss_and_beats_chance_dice(run):
    quick = run.profile.quick
    losses = epoch_losses(run.log)
    assert len(losses) == quick["train"]["max_epochs"]
    first, last = np.mean(losses[1]), np.mean(losses[max(losses)])
    assert last < quick["max_loss_ratio"] * first, f"loss went from {first:.3f} to {last:.3f}"
    assert run.ckpt.is_file(), "no best checkpoint written"
    assert list((run.out / "train" / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard log"
    # chance: the best label-blind guess marks the whole image as the class, Dice 2p / (1 + p) for a class that
    # covers a fraction p of the test images; the trained bundle must be well above it and above its floor
    summary = json.loads((run.out / "eval" / "metrics_summary.json").read_text())
    labels = [read_grid(run.data / case["label"])[0] for case in run.index["test"]]
    num_classes = len(run.profile.classes)
    for index, key in run.profile.dice_keys.items():
        if key not in quick["min_dice"]:
            continue
        fractions = [np.mean((lab > 0) if lab.max() > num_classes - 1 else (lab == index)) for lab in labels]
        chance = max(2 * p / (1 + p) for p in fractions)
        assert summary[key]["mean"] > max(quick["min_dice"][key], chance + 0.15), (key, summary[key], chance)


def test_evaluation_writes_per_case_and_summary_metrics(run):
    test_cases = run.index["test"]
    rows = read_csv(run.out / "eval" / "metrics.csv")
    summary = json.loads((run.out / "eval" / "metrics_summary.json").read_text())
    assert len(rows) == summary["cases"] == len(test_cases)
    for key in run.profile.dice_keys.values():
        assert key in rows[0] and key in summary, key
        assert all(row[key] == "" or 0.0 <= float(row[key]) <= 1.0 or row[key] == "nan" for row in rows), key
    # every case flagged as inference flags it (the rules of its inference.json, the ranges of the training labels
    # that training recorded beside the weights), and how well the flags find the cases of low Dice
    # (common.review.review_summary); the input warnings need the images, not in the table, so they are left out
    rules = rules_of(run.profile.root)
    training = TrainingStatistics.load(run.ckpt.parent / "training_statistics.json")
    for row in rows:
        values = {k: _value(v) for k, v in row.items()}
        assert {"mean_entropy", "mean_margin", "review", "review_reasons"} <= set(row)
        reasons = [r for r in row["review_reasons"].split("; ") if r and not r.startswith("input ")]
        assert review_flag(values, rules, training)["review_reasons"] == "; ".join(reasons), row["case"]
        assert (row["review"] == "True") == bool(row["review_reasons"])
    review = summary["review"]
    assert review["cases"] == len(rows) and review["flagged"] == sum(row["review"] == "True" for row in rows)
    assert review["dice_columns"] == list(run.profile.dice_keys.values())
    assert review["worst_cases"] >= 1 and 0.0 <= review["worst_flagged"] <= 1.0
    expected = review_summary(rows)
    assert review.pop("dice_columns") == expected.pop("dice_columns")
    expected = {k: None if np.isnan(v) else v for k, v in expected.items()}  # NaN is null in JSON
    assert review == pytest.approx(expected), "not the summary of the table's rows"


def _value(text: str) -> object:
    """A metrics.csv cell as the row held it: a number, None for an empty cell, else the text."""
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def test_inference_writes_every_output_in_the_input_grid(run):
    inference = run.out / "inference"
    test_cases = run.index["test"]
    for case in test_cases:
        seg_path = segmentation_path(run.profile, inference, case)
        assert seg_path.is_file(), f"{seg_path.name} not written"
        source, source_affine = read_grid(run.data / files_of(case["image"])[0])
        seg, seg_affine = read_grid(seg_path)
        spatial = source.shape[: run.profile.image_dims]
        assert seg.shape == spatial, (seg_path.name, seg.shape, spatial)
        if source_affine is not None:
            np.testing.assert_allclose(seg_affine, source_affine, atol=1e-4, err_msg=seg_path.name)
        assert np.issubdtype(seg.dtype, np.integer)
        assert len(np.unique(seg)) <= len(run.profile.classes)
    assert not [p for p in inference.iterdir() if p.name.startswith(".")], "temporary files left behind"
    # every case has its measurements, once; the overlays of the demo were drawn
    measurements = [p for p in inference.glob("*.csv") if len(read_csv(p)) == len(test_cases)]
    assert measurements, "no per-case measurements table with one row per case"
    assert any("review" in read_csv(p)[0] for p in measurements)  # the review columns (common.review)
    assert (inference / "report.html").is_file(), "no review page"
    assert len(list(run.out.glob("overlay_*.png"))) == min(3, len(test_cases))
    assert "held-out cases" in run.log


def test_training_records_what_inference_compares_each_case_with(run):
    # the training cases' spacing, normalised intensities and label measurements, beside the weights
    statistics = json.loads((run.ckpt.parent / "training_statistics.json").read_text())
    assert 1 <= statistics["cases"] < len(run.index["training"])  # the training split, without validation cases
    assert len(statistics["spacing_mm"]["low"]) == run.profile.image_dims
    assert len(statistics["intensity"]["low"]) == len(run.profile.channels)
    assert set(rules_of(run.profile.root)["ranges"]) <= set(statistics["measurements"])
    # the held-out test images come from the same generator: no input warning on any of them
    tables = [read_csv(p) for p in (run.out / "inference").glob("*.csv")]
    rows = [row for table in tables if len(table) == len(run.index["test"]) and "review" in table[0] for row in table]
    assert len(rows) == len(run.index["test"]), "no measurements table with the review columns"
    assert not [row["review_reasons"] for row in rows if "input " in row["review_reasons"]]


def _broken_and_flat_inputs(run: QuickRun, folder: Path) -> tuple[str, str]:
    """A good test case copied into ``folder``, plus an unreadable file and an image with too few dimensions or
    channels, in the bundle's own file format; return the names of the two bad files."""
    case = run.index["test"][0]
    for image in files_of(case["image"]):
        (folder / Path(image).name).write_bytes((run.data / image).read_bytes())
    first = run.data / files_of(case["image"])[0]
    ext = first.name[len(first.name.split(".")[0]) :]
    (folder / f"broken{ext}").write_bytes(b"\x1f\x8b\x89PNG not really an image")
    if run.profile.image_dims == 2:
        Image.fromarray(np.zeros((48, 40), np.uint8)).save(folder / f"flat{ext}")  # one channel, not three
    else:
        image = nib.load(first)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[..., 0], image.affine), folder / f"flat{ext}")
    return f"broken{ext}", f"flat{ext}"


def test_bad_files_are_skipped_and_the_good_case_is_written(run, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    broken, flat = _broken_and_flat_inputs(run, inputs)
    out = run.segment(inputs, outputs, failures=2)
    assert segmentation_path(run.profile, outputs, run.index["test"][0]).is_file()
    failures = {Path(f["image"]).name: f["error"] for f in json.loads((outputs / "failed_cases.json").read_text())}
    assert set(failures) == {broken, flat}, failures
    assert broken in failures[broken] and flat in failures[flat]
    assert "expected 3" in failures[flat], failures[flat]
    assert "skipped" in out
    assert not list(outputs.glob("broken*")) and not list(outputs.glob("flat*"))
    assert not [p for p in outputs.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.parametrize("fault", ["label_values", "label_shape", "nan"])
def test_bad_training_case_is_refused_naming_the_file(run, tmp_path, fault):
    case = run.index["training"][0]
    images = [run.data / p for p in files_of(case["image"])]
    label_path = run.data / case["label"]
    if not label_path.name.endswith(".nii.gz"):
        pytest.skip("8-bit mask labels: any value is a class (0 / non-zero), and no NaN")
    label = nib.load(label_path)
    values = np.asarray(label.dataobj).copy()
    culprit = "lab.nii.gz"
    if fault == "label_values":
        values[0, 0, 0] = len(run.profile.classes) + 3
        expected = f"outside the classes 0..{len(run.profile.classes) - 1}"
    elif fault == "label_shape":
        values = values[:, :-2]
        expected = "spatial shape"
    else:
        culprit, expected = images[0].name, "NaN"
    nib.save(nib.Nifti1Image(values, label.affine), tmp_path / "lab.nii.gz")
    paths = []
    for image in images:
        data = np.asarray(nib.load(image).dataobj).astype(np.float32)
        if fault == "nan" and image == images[0]:
            data[3, 3, 1] = np.nan
        nib.save(nib.Nifti1Image(data, nib.load(image).affine), tmp_path / image.name)
        paths.append(str(tmp_path / image.name))
    entry = {"image": paths if isinstance(case["image"], list) else paths[0], "label": str(tmp_path / "lab.nii.gz")}
    with pytest.raises(Exception) as err:
        training_preprocessing(run.profile)(entry)
    text = str(err.value.__cause__ or err.value)
    assert culprit in text and expected in text, text


def test_training_resumes_from_the_last_checkpoint(run):
    quick = run.profile.quick
    overrides = {**quick.get("overrides", {}), "val_interval": quick["train"]["val_interval"]}
    extra = {k: v for k, v in quick["train"].items() if k not in ("max_epochs", "val_interval")}
    assert_resumes_one_epoch(run.profile.root, run.as_trained(), run.data, quick["train"]["max_epochs"],
                             **overrides, **extra)  # fmt: skip


def test_torchscript_export_matches_the_network(run, tmp_path):
    quick = run.profile.quick
    x = torch.rand(*quick["torchscript_input"])
    config = quick.get("torchscript_config", "train.json")
    assert_torchscript_matches(run.profile.root, run.ckpt, tmp_path, x, config=config)


def test_export_with_measured_metrics_then_verify(run, tmp_path):
    out = tmp_path / "out"
    check(
        subprocess.run(
            [sys.executable, "-m", "common.export", str(run.profile.root.relative_to(ROOT)), "--out", str(out),
             "--ckpt", str(run.ckpt), "--metrics", str(run.out / "eval" / "metrics_summary.json"),
             "--trained_on", "the quick synthetic demo run (python -m synthetic.demo NAME --quick)"],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )
    )  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "common.verify", str(out / run.profile.name)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0 and "verify_net_in_out passed" in result.stdout, result.stdout + result.stderr
    assert "model.ts" in result.stdout or (out / run.profile.name / "models" / "model.ts").is_file()


@pytest.mark.slow
def test_multi_gpu_config_trains_one_epoch_with_torchrun_gloo(run, tmp_path):
    """Two gloo processes on CPU and one validation case (the sampler gives it to both): absolute paths."""
    entries = run.index["training"]

    def absolute(entry: dict) -> dict:
        image = [str(run.data / p) for p in files_of(entry["image"])]
        return {**entry, "image": image if isinstance(entry["image"], list) else image[0],
                "label": str(run.data / entry["label"]),
                **({"mask": str(run.data / entry["mask"])} if "mask" in entry else {})}  # fmt: skip

    split = len(entries) - 1
    listing = {"training": [absolute(e) for e in entries[:split]], "validation": [absolute(e) for e in entries[split:]]}
    (tmp_path / "dataset.json").write_text(json.dumps(listing))
    port = 29530 + BUNDLE_NAMES.index(run.profile.name)
    assert_torchrun_trains_one_epoch(
        run.profile.root, tmp_path, tmp_path, port=port, **run.profile.quick.get("overrides", {})
    )
