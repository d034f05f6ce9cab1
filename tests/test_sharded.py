"""Sharded inference and evaluation: ``torchrun --nproc_per_node 2`` (gloo on CPU) with
``multi_gpu_inference.json`` / ``multi_gpu_evaluate.json`` writes what one process writes: the same segmentations,
one measurements table and one ``failed_cases.json`` holding every case once, the same metrics."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import synthetic
from common.profile import describe
from conftest import (
    BUNDLE_NAMES,
    ROOT,
    _without_progress,
    config_list,
    generator_options,
    monai_bundle,
    quick_overrides,
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Detected deprecated name")]

#: a case's or a failed case's row of the review page: its class (flag) and first cell
CASE_ROW = re.compile(r'<tr class="(flagged|ok|failed)"><td[^>]*>([^<]*)</td>')


def torchrun(port: int, *configs: str, bundle: Path, **args: object) -> subprocess.CompletedProcess:
    """``monai.bundle run`` of ``configs`` under ``torchrun`` with two gloo processes."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        "-m", "monai.bundle", "run", "--config_file", config_list(bundle, *configs), "--bundle_root", str(bundle),
    ]  # fmt: skip
    for key, value in args.items():
        cmd += [f"--{key}", str(value)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def pixels(path: Path) -> np.ndarray:
    """The values of a written segmentation or probability map."""
    if path.name.endswith((".nii", ".nii.gz")):
        return np.asarray(nib.load(path).dataobj)
    return np.asarray(Image.open(path))


def values(text: str, suffix: str) -> dict[str, object]:
    """A table's cells (CSV) or a JSON document, numbers as floats, for a comparison with a tolerance."""

    def number(cell: str) -> object:
        try:
            return float(cell)
        except ValueError:
            return cell

    document = [[number(cell) for cell in row] for row in csv.reader(text.splitlines())]
    return leaves(document if suffix == ".csv" else json.loads(text))


def leaves(obj: object, path: str = "") -> dict[str, object]:
    """``{path: value}`` of every scalar of a nested list / dict structure."""
    if isinstance(obj, dict):
        return {k: v for key, item in obj.items() for k, v in leaves(item, f"{path}/{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, item in enumerate(obj) for k, v in leaves(item, f"{path}/{i}").items()}
    return {path: obj}


def assert_same_outputs(single: Path, sharded: Path) -> None:
    """The same files, the same pixels, the same tables and the same list of failed cases (both runs on one thread
    per process, as ``torchrun`` sets it, so that sums run in the same order)."""
    names = sorted(p.name for p in single.iterdir())
    assert names == sorted(p.name for p in sharded.iterdir())
    for name in names:
        if name.endswith((".png", ".nii.gz")):
            differ = pixels(single / name).astype(float) - pixels(sharded / name)
            assert (np.abs(differ) > 1).mean() <= 1e-4, name  # a probability's last 8-bit step
        elif name.endswith(".html"):  # the review page: the same cases in the same order, each with its picture
            expected, got = (re.findall(CASE_ROW, (folder / name).read_text()) for folder in (single, sharded))
            assert got == expected and expected, name
            assert (sharded / name).read_text().count("data:image/png") == (single / name).read_text().count(
                "data:image/png"
            )
        elif name.endswith((".csv", ".json")):
            suffix = Path(name).suffix
            expected, got = values((single / name).read_text(), suffix), values((sharded / name).read_text(), suffix)
            assert got.keys() == expected.keys(), name
            for key, value in expected.items():
                if isinstance(value, float):
                    assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (name, key)
                else:
                    assert got[key] == value, (name, key)


def _input_kind(name: str) -> tuple[int, int, bool]:
    """What the inference of a bundle reads and runs: network dimensions, image dimensions, one file per channel."""
    p = describe(name)
    return p.network_dims, p.image_dims, p.is_multimodal


#: one bundle per kind of input (photographs, single-file volumes sliced by a 2D network, multimodal volumes, volumes
#: of a 3D network): the override and the sharding code are the same file everywhere; this keeps CI under 30 minutes
ONE_PER_INPUT = [n for i, n in enumerate(BUNDLE_NAMES) if _input_kind(n) not in map(_input_kind, BUNDLE_NAMES[:i])]


@pytest.mark.parametrize("name", ONE_PER_INPUT)
def test_sharded_inference_writes_what_one_process_writes(name, untrained, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it for each process
    profile = describe(name)
    inputs = tmp_path / "in"
    written = synthetic.generator(profile.task).write_inputs(inputs, 2, seed=9, **generator_options(name))
    ext = ".nii.gz" if written[0].name.endswith(".nii.gz") else written[0].suffix
    (inputs / f"broken{ext}").write_bytes(b"not an image")
    args = {"input_dir": inputs, "ckpt_path": untrained[name], **quick_overrides(name)}
    single = monai_bundle("run", config_file=config_list(profile.root, "inference.json"), bundle_root=profile.root,
                          output_dir=tmp_path / "single", **args)  # fmt: skip
    assert single.returncode == 1, _without_progress(single.stdout + single.stderr)[-3000:]
    port = 29640 + BUNDLE_NAMES.index(name)
    sharded = torchrun(port, "inference.json", "multi_gpu_inference.json", bundle=profile.root,
                       output_dir=tmp_path / "sharded", **args)  # fmt: skip
    output = sharded.stdout + sharded.stderr
    assert sharded.returncode != 0 and "terminate called" not in output, _without_progress(output)[-3000:]
    cases = len(json.loads((tmp_path / "single" / "failed_cases.json").read_text()))
    assert cases == 1 and output.count("cases written; 1 skipped") == 1  # the first process alone reports
    assert_same_outputs(tmp_path / "single", tmp_path / "sharded")


#: one bundle per network dimension: the evaluation override is the same file in every bundle, and the
#: inference test above runs every bundle's own post-processing sharded
ONE_PER_KIND = [next(n for n in BUNDLE_NAMES if describe(n).network_dims == dims) for dims in (2, 3)]


@pytest.mark.parametrize("name", ONE_PER_KIND)
def test_sharded_evaluation_gives_the_single_process_metrics(name, untrained, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it for each process
    profile = describe(name)
    synthetic.write_dataset(profile.task, tmp_path / "data", 2, 3, seed=4, **generator_options(name))
    args = {"dataset_dir": tmp_path / "data", "ckpt_path": untrained[name], **quick_overrides(name)}
    configs = ("train.json", "evaluate.json")
    single = monai_bundle("run", config_file=config_list(profile.root, *configs), bundle_root=profile.root,
                          output_dir=tmp_path / "single", **args)  # fmt: skip
    assert single.returncode == 0, _without_progress(single.stdout + single.stderr)[-3000:]
    port = 29650 + BUNDLE_NAMES.index(name)
    sharded = torchrun(port, *configs, "multi_gpu_evaluate.json", bundle=profile.root,
                       output_dir=tmp_path / "sharded", **args)  # fmt: skip
    assert sharded.returncode == 0, _without_progress(sharded.stdout + sharded.stderr)[-3000:]
    rows = (tmp_path / "single" / "metrics.csv").read_text().splitlines()
    tests = json.loads((tmp_path / "data" / "dataset.json").read_text())["test"]
    assert len(rows) == 1 + len(tests)  # a header and every test case once
    assert_same_outputs(tmp_path / "single", tmp_path / "sharded")
