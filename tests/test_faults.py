"""The fault catalogue: mistakes a user can make, each run on every bundle, asserting the one line they see, the
exit status and which outputs exist afterwards (docs/design.md, "Errors and trust"). The bundles run with
untrained weights: the faults are about inputs and set-up, not about what the network learnt."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import synthetic
from common.data import list_images
from common.dicom import write_dicom_series
from common.profile import describe
from conftest import (
    BUNDLE_NAMES,
    config_list,
    generator_options,
    monai_bundle,
    quick_overrides,
    read_csv,
    run_inference,
)

pytestmark = pytest.mark.filterwarnings("ignore:Detected deprecated name 'optional_packages_version'")

#: the extensions test inputs are written with, and the other extension of the same format used to make two
#: inputs that would share an output name
OTHER_EXTENSION = {".png": ".tif", ".nii.gz": ".nii"}


def extension_of(path: Path) -> str:
    """``.nii.gz`` or the file's last suffix."""
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def copy_case(
    files: list[Path], folder: Path, stem: str, ext: str, channels: list[int] | None = None, crop: int | None = None
) -> list[Path]:
    """Write the image files of one case again as ``folder/<stem>[_XXXX]<ext>``, re-encoded for ``ext``; a
    multimodal case (several files) keeps one file per channel, numbered ``channels`` (0, 1, ... by default);
    ``crop`` keeps only a corner of ``crop`` pixels (and two slices of a volume)."""
    numbers = channels if channels is not None else list(range(len(files)))
    written = []
    for number, source in zip(numbers, files):
        target = folder / (f"{stem}_{number:04d}{ext}" if len(files) > 1 else f"{stem}{ext}")
        if extension_of(source) == ".png":
            image = Image.open(source)
            (image.crop((0, 0, crop, crop)) if crop else image).save(target)
        else:
            image = nib.load(source)
            values = np.asarray(image.dataobj)
            nib.save(nib.Nifti1Image(values[:crop, :crop, :2] if crop else values, image.affine), target)
        written.append(target)
    return written


def output_name(name: str, stem: str, ext: str) -> str:
    """The segmentation's file name for the input case ``stem``."""
    return f"{stem}_seg{describe(name).output_ext or ext}"


@pytest.fixture(scope="module")
def sample_case(tmp_path_factory) -> dict[str, list[Path]]:
    """The image file(s) of one synthetic case per bundle, written by its generator at quick-mode size."""
    cases = {}
    for name in BUNDLE_NAMES:
        profile = describe(name)
        folder = tmp_path_factory.mktemp(name)
        synthetic.generator(profile.task).write_inputs(folder, 1, seed=3, **generator_options(name))
        first = list_images(str(folder), tuple(OTHER_EXTENSION), group_channels=profile.is_multimodal)[0]["image"]
        cases[name] = [Path(p) for p in (first if isinstance(first, list) else [first])]
    return cases


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_each_bad_case_in_a_folder_fails_alone(name, untrained, sample_case, tmp_path):
    profile, files = describe(name), sample_case[name]
    ext = extension_of(files[0])
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    copy_case(files, inputs, "good", ext)
    copy_case(files, inputs, "blocked", ext)
    (outputs / output_name(name, "blocked", ext)).mkdir(parents=True)  # its output cannot be written
    twins = [copy_case(files, inputs, "twin", e)[0] for e in (ext, OTHER_EXTENSION[ext])]
    tiny = copy_case(files, inputs, "tiny", ext, crop=8)
    expected = {"blocked": "blocked", twins[0].name: "twin_seg", twins[1].name: "twin_seg"}
    expected[tiny[0].name] = "too small for this bundle"
    if profile.is_multimodal:
        gap = copy_case(files, inputs, "gap", ext, channels=[0, 2, 3])
        expected[gap[0].name] = "without _0001"
    result = run_inference(profile.root, inputs, outputs, untrained[name], **quick_overrides(name))

    assert result.returncode == 1, result.stderr[-3000:]
    cases = 1 + len(expected)
    summary = f"1 of {cases} cases written; {cases - 1} skipped, listed in {outputs / 'failed_cases.json'}"
    assert summary in result.stdout, result.stdout[-3000:]
    assert f"error: {cases - 1} of {cases} cases failed" in result.stderr and "Traceback" not in result.stderr
    failures = json.loads((outputs / "failed_cases.json").read_text())
    by_file = {Path(f["image"].split(", ")[0]).name: f["error"] for f in failures}
    by_file["blocked"] = by_file.pop(next(k for k in by_file if k.startswith("blocked")))
    assert set(by_file) == set(expected), by_file
    for culprit, words in expected.items():
        assert words in by_file[culprit], by_file[culprit]
    twin_message = by_file[twins[0].name]
    assert str(twins[0]) in twin_message and str(twins[1]) in twin_message and "rename" in twin_message
    assert (outputs / output_name(name, "good", ext)).is_file()
    written = {p.name for p in outputs.iterdir()}
    assert not [n for n in written if n.startswith(("twin", "gap", "tiny", "."))], written  # none of theirs
    assert not any((outputs / output_name(name, "blocked", ext)).iterdir())
    assert not [n for n in written if n.startswith("blocked") and n != output_name(name, "blocked", ext)], written
    # the review page: the good case with its picture, the failed ones listed; the table has the review columns
    page = (outputs / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 1 and twins[0].name in page and "blocked" in page
    tables = [read_csv(p) for p in outputs.glob("*.csv")]
    good = [row for rows in tables for row in rows if row.get("case") == "good" and "review" in row]
    assert len(good) == 1 and good[0]["review"] in ("True", "False") and "mean_entropy" in good[0], tables


def write_dataset(folder: Path, name: str, entries: list[dict]) -> Path:
    """A ``dataset.json`` in ``folder`` listing ``entries`` (absolute paths) for training."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"name": name, "training": entries}))
    return folder


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> dict[str, list[dict]]:
    """Three labelled synthetic training cases per bundle (absolute paths), at quick-mode size."""
    datasets = {}
    for name in BUNDLE_NAMES:
        profile = describe(name)
        folder = tmp_path_factory.mktemp(f"{name}_data")
        index = synthetic.write_dataset(profile.task, folder, 3, 1, seed=5, **generator_options(name))
        entries = json.loads(Path(index).read_text())["training"]
        for entry in entries:
            for key in ("image", "label", "mask"):
                if key in entry:
                    value = entry[key]
                    entry[key] = [str(folder / v) for v in value] if isinstance(value, list) else str(folder / value)
        datasets[name] = entries
    return datasets


def train(name: str, dataset_dir: Path, work: Path):
    """Run ``train.json`` for one epoch on ``dataset_dir``; return the finished process."""
    profile = describe(name)
    return monai_bundle(
        "run", config_file=config_list(profile.root, "train.json"), bundle_root=profile.root, dataset_dir=dataset_dir,
        ckpt_path=work / "models" / "model.pt", output_dir=work / "out", max_epochs=1, num_workers=0,
    )  # fmt: skip


def assert_one_line_error(result, *words: str) -> str:
    """Status 1, one ``error:`` line on stderr holding ``words``, no traceback, no abort; return the line."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "terminate called" not in result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


#: (bundle, fault) pairs: faults of the data list itself are the same for every bundle (one is enough); faults of
#: the files are tried on each bundle; a missing modality on the multimodal bundles
TRAINING_FAULTS = (
    [(BUNDLE_NAMES[0], "no_dataset_json"), (BUNDLE_NAMES[0], "malformed")]
    + [(name, fault) for name in BUNDLE_NAMES for fault in ("missing_file", "label_values")]
    + [(name, "modality") for name in BUNDLE_NAMES if describe(name).is_multimodal]
)


@pytest.mark.parametrize(("name", "fault"), TRAINING_FAULTS)
def test_bad_training_set_up_stops_with_one_line(name, fault, small_dataset, tmp_path):
    entries = [dict(e) for e in small_dataset[name]]
    data = tmp_path / "data"
    data.mkdir()
    if fault == "no_dataset_json":
        words = [f"{data / 'dataset.json'}: no dataset.json"]
    elif fault == "malformed":
        write_dataset(data, name, entries)
        (data / "dataset.json").write_text((data / "dataset.json").read_text()[:-2])
        words = [str(data / "dataset.json"), "not valid JSON"]
    elif fault == "missing_file":
        entries[0]["label"] = str(data / "gone.nii.gz")
        write_dataset(data, name, entries)
        words = [str(data / "gone.nii.gz")]
    elif fault == "modality":
        entries[0]["image"] = entries[0]["image"][:-1]
        write_dataset(data, name, entries)
        names = ", ".join(describe(name).channels.values())
        words = [entries[0]["image"][0], f"expected {len(describe(name).channels)} ({names})", "<case>_0000"]
    else:
        label_path = Path(entries[0]["label"])
        if not label_path.name.endswith(".nii.gz"):
            pytest.skip("8-bit mask labels: any non-zero value is the structure")
        label = nib.load(label_path)
        values = np.asarray(label.dataobj).copy()
        values.flat[0] = 7
        nib.save(nib.Nifti1Image(values, label.affine), data / "seven.nii.gz")
        entries[0]["label"] = str(data / "seven.nii.gz")
        write_dataset(data, name, entries)
        words = [str(data / "seven.nii.gz"), "values [7.0] outside the classes"]
    assert_one_line_error(train(name, data, tmp_path), *words)
    assert not (tmp_path / "models" / "model.pt").exists()


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_inference_set_up_errors_are_one_line(name, untrained, sample_case, tmp_path):
    root = describe(name).root
    missing = run_inference(root, tmp_path / "nowhere", tmp_path / "out", untrained[name])
    assert_one_line_error(missing, f"{tmp_path / 'nowhere'}: input_dir does not exist")
    inputs = tmp_path / "in"
    inputs.mkdir()
    empty = run_inference(root, inputs, tmp_path / "out", untrained[name])
    assert_one_line_error(empty, f"{inputs}: input_dir holds no images")
    copy_case(sample_case[name], inputs, "case", extension_of(sample_case[name][0]))
    no_weights = run_inference(root, inputs, tmp_path / "out", tmp_path / "model.pt", **quick_overrides(name))
    assert_one_line_error(no_weights, f"{tmp_path / 'model.pt'}: no weights there", "--ckpt_path")
    assert not list((tmp_path / "out").glob("case_seg*"))


@pytest.mark.parametrize("name", [n for n in BUNDLE_NAMES if describe(n).modality == "CT"])
def test_broken_dicom_series_are_refused_and_the_whole_one_is_written(name, untrained, sample_case, tmp_path):
    image = nib.load(sample_case[name][0])
    volume = np.asarray(image.dataobj)
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    write_dicom_series(volume, image.affine, inputs / "whole")
    write_dicom_series(volume, image.affine, inputs / "gappy")[len(volume[0, 0]) // 2].unlink()
    write_dicom_series(volume, image.affine, inputs / "two")
    for path in write_dicom_series(volume[..., :4], image.affine, tmp_path / "other", series_number=2):
        path.rename(inputs / "two" / f"other_{path.name}")
    result = run_inference(describe(name).root, inputs, outputs, untrained[name], **quick_overrides(name))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    failures = {Path(f["image"]).name: f["error"] for f in json.loads((outputs / "failed_cases.json").read_text())}
    assert set(failures) == {"gappy", "two"}, failures
    assert failures["gappy"].startswith(f"{inputs / 'gappy'}: 1 missing slice(s)")
    assert failures["two"].startswith(f"{inputs / 'two'}: holds 2 DICOM series")
    assert (outputs / "whole_seg.nii.gz").is_file() and not list(outputs.glob("gappy*")) + list(outputs.glob("two*"))
