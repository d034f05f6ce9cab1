"""The architecture benchmark in quick mode: every output written, one row per task x architecture, Dice in [0, 1],
parameter counts equal to the networks built directly, the data-efficiency label counts, valid charts; and a
bundle's configs parsed with its own ``scripts`` importable, leaving no ``scripts`` package behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch.nn as nn
from monai.networks.nets import UNet
from PIL import Image

from common.networks import FCN, ContextUNet, PatchCNN, ReNet2d
from conftest import ROOT, load_module, quick_benchmark, read_csv

SCRIPT = ROOT / "benchmarks" / "architectures.py"
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmark imports its siblings (charts, options)
TASK_CHANNELS = {"retinal": (3, 2), "cardiac": (1, 4)}
#: the bundle's own modules among a task's preprocessing transforms (the retinal field-of-view transform)
OWN_SCRIPTS = {"retinal": ("scripts.fov",)}
ARCHITECTURES = ["patch_cnn", "fcn", "unet", "fcn_rnn", "unet_rnn"]
OUTPUTS = [
    "results.csv",
    "data_efficiency.csv",
    "learning_curves.csv",
    "results.md",
    "learning_curves.png",
    "data_efficiency.png",
]


def direct_networks(in_channels: int, out_channels: int) -> dict[str, nn.Module]:
    """The five networks built directly with the arguments the bundles' configs are meant to give."""
    unet = {
        "spatial_dims": 2,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "channels": [16, 32, 64, 128],
        "strides": [2, 2, 2],
        "num_res_units": 2,
        "norm": "batch",
    }
    fcn = {
        "spatial_dims": 2,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "features": [16, 32, 64, 128],
        "norm": "batch",
        "dropout": 0.1,
        "full_resolution_scores": True,
    }
    return {
        "patch_cnn": PatchCNN(in_channels, out_channels, patch_size=33),
        "fcn": FCN(**fcn),
        "unet": UNet(**unet),
        "fcn_rnn": FCN(**fcn, context=ReNet2d(128, 64)),
        "unet_rnn": ContextUNet(**unet, context=ReNet2d(128, 64)),
    }


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of one quick-mode run, as a user starts it (a fresh process, so torch sees its thread policy)."""
    return quick_benchmark(SCRIPT, tmp_path_factory.mktemp("architectures"), timeout=600)


def test_every_output_is_written(quick_run):
    for name in OUTPUTS:
        assert (quick_run / name).stat().st_size > 0, name


def test_results_have_one_row_per_task_and_architecture_with_dice_in_range(quick_run):
    rows = read_csv(quick_run / "results.csv")
    assert sorted((r["task"], r["architecture"]) for r in rows) == sorted(
        (t, a) for t in TASK_CHANNELS for a in ARCHITECTURES
    )
    for r in rows:
        for key in ("dice", "best_dice", "large_dice"):
            assert 0.0 <= float(r[key]) <= 1.0, (r["task"], r["architecture"], key, r[key])
        assert float(r["infer_s_per_image"]) > 0 and int(r["steps"]) > 0
        assert r["large_accepted_as_is"] in ("True", "False")


def test_parameter_counts_equal_the_networks_built_directly(quick_run):
    for r in read_csv(quick_run / "results.csv"):
        network = direct_networks(*TASK_CHANNELS[r["task"]])[r["architecture"]]
        assert int(r["parameters"]) == sum(p.numel() for p in network.parameters()), (r["task"], r["architecture"])


def test_patch_cnn_and_fcn_accept_larger_images_as_they_are(quick_run):
    accepted = {(r["task"], r["architecture"]): r["large_accepted_as_is"] for r in read_csv(quick_run / "results.csv")}
    for task in TASK_CHANNELS:
        assert accepted[task, "patch_cnn"] == accepted[task, "fcn"] == "True"


def test_data_efficiency_has_every_label_count(quick_run):
    rows = read_csv(quick_run / "data_efficiency.csv")
    for task in TASK_CHANNELS:
        for arch in ARCHITECTURES:
            counts = sorted(int(r["labelled_images"]) for r in rows if (r["task"], r["architecture"]) == (task, arch))
            assert counts == [2, 4], (task, arch)
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)


def test_learning_curves_cover_every_main_run(quick_run):
    rows = [r for r in read_csv(quick_run / "learning_curves.csv") if r["run"] == "main"]
    assert {(r["task"], r["architecture"]) for r in rows} == {(t, a) for t in TASK_CHANNELS for a in ARCHITECTURES}
    assert all(float(r["train_s"]) > 0 for r in rows)


def test_report_and_charts(quick_run):
    report = (quick_run / "results.md").read_text()
    for heading in ("## retinal", "## cardiac", "## Data efficiency"):
        assert heading in report
    for name in ("learning_curves.png", "data_efficiency.png"):
        with Image.open(quick_run / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_bundle_configs_import_their_own_scripts_and_leave_none_behind():
    bench = load_module(SCRIPT, "benchmark_architectures")
    path = list(sys.path)
    for task, (in_channels, classes) in TASK_CHANNELS.items():
        profile = bench.task_profile(task)
        assert profile.task == task and (len(profile.channels), len(profile.classes)) == (in_channels, classes)
        modules = {type(t).__module__ for t in bench.bundle_content(profile.name, "preprocessing")}
        assert modules <= set(OWN_SCRIPTS.get(task, ())) | {m for m in modules if not m.startswith("scripts")}
        assert set(OWN_SCRIPTS.get(task, ())) <= modules, task
        assert not [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")], task
        assert sys.path == path, task
    with pytest.raises(ValueError, match="no bundle"):
        bench.task_profile("kidney")


def test_settings_are_checked():
    bench = load_module(SCRIPT, "benchmark_architectures")
    assert bench.make_settings(quick=True, label_counts="2,3").label_counts == (2, 3)
    with pytest.raises(ValueError, match="unknown settings"):
        bench.make_settings(budget=3)
    with pytest.raises(ValueError, match="training pool"):
        bench.make_settings(quick=True, label_counts=(2, 8))
    with pytest.raises(ValueError, match="unknown architecture"):
        bench.make_settings(architectures="vgg")
