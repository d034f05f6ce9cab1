"""The synthetic phantoms' one interface: ``python -m synthetic TASK ...`` and ``synthetic.write_dataset``, the same
for every task, writing a Decathlon-style data set that ``common.data.load_datalist`` reads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.data import load_datalist
from common.profile import bundle_names, describe
from conftest import ROOT
from synthetic import generator, tasks, write_dataset

#: a small size for the tasks whose generators take one (the others have a fixed anatomy-driven size)
SMALL = {"retinal": 64, "liver": 40, "lung": 40, "brain": 40}


def test_every_bundle_names_a_task_that_has_a_generator():
    assert {describe(name).task for name in bundle_names()} <= set(tasks())
    assert len(tasks()) >= 5


@pytest.mark.parametrize("task", tasks())
def test_command_line_writes_a_dataset_load_datalist_reads(task, tmp_path):
    out = tmp_path / task
    cmd = [sys.executable, "-m", "synthetic", task, "--output_dir", str(out), "--num_train", "1", "--num_test", "1"]
    cmd += ["--seed", "2"] + (["--size", str(SMALL[task])] if task in SMALL else [])
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert str(out / "dataset.json") in result.stdout
    index = json.loads((out / "dataset.json").read_text())
    assert index["numTraining"] >= 1 and index["numTest"] >= 1  # a cardiac subject is two entries, ED and ES
    for entry in load_datalist(str(out), "training", val_fraction=0.0, seed=0) + load_datalist(str(out), "test"):
        files = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        assert all((out / f).is_file() for f in files + [entry["label"]]), entry


def test_python_function_is_seeded_like_the_command_line(tmp_path):
    first = json.loads(open(write_dataset("retinal", tmp_path / "a", 1, 0, seed=4, size=48)).read())
    again = json.loads(open(write_dataset("retinal", tmp_path / "b", 1, 0, seed=4, size=48)).read())
    assert (tmp_path / "a" / first["training"][0]["image"]).read_bytes() == (
        tmp_path / "b" / again["training"][0]["image"]
    ).read_bytes()


def test_unknown_task_is_refused_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="known tasks: brain, cardiac"):
        generator("kidney")
    result = subprocess.run([sys.executable, "-m", "synthetic", "kidney", "--output_dir", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "TASK is one of: brain, cardiac, liver, lung, retinal" in result.stderr
