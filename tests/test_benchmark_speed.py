"""The speed benchmark: the quick run writes every output with one row per bundle, finite positive ratios, the
recorded network calls match the inferer's windows, positive peak memory; its measuring pieces count exactly
(forward recorder, bare-forward replay, throughput counter, transform timer, peak RSS of a child); and every bundle's
``speed`` section of ``tooling.json`` gives its generator options it accepts."""

from __future__ import annotations

import inspect
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import synthetic
from common.profile import bundle_names, describe
from conftest import ROOT, load_module, quick_benchmark, read_csv

SCRIPT = ROOT / "benchmarks" / "speed.py"
BUNDLES = bundle_names()
#: the quick run measures a photograph and a CT bundle: the benchmark's code is the same for every bundle (what
#: differs is in each bundle's profile, checked for all of them below), and CI time is kept for the bundles' tests
QUICK_BUNDLES = ("retinal_vessel_unet", "liver_ct_unet3d")
OUTPUTS = ["inference.csv", "inference_breakdown.csv", "training.csv", "memory.csv", "results.md", "speed.png"]

sys.path.insert(0, str(ROOT / "benchmarks"))
bench = load_module(SCRIPT, "benchmark_speed")
training = load_module(ROOT / "benchmarks" / "bundle_training.py", "bundle_training")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of one quick-mode run, started as a user starts it."""
    folder = tmp_path_factory.mktemp("speed")
    return quick_benchmark(SCRIPT, folder, 900, "--bundles", ",".join(QUICK_BUNDLES))


def test_every_output_is_written_with_one_row_per_bundle(quick_run):
    for name in OUTPUTS:
        assert (quick_run / name).stat().st_size > 0, name
    for name in ("inference.csv", "training.csv", "memory.csv"):
        assert sorted(r["bundle"] for r in read_csv(quick_run / name)) == sorted(QUICK_BUNDLES), name
    assert {r["bundle"] for r in read_csv(quick_run / "inference_breakdown.csv")} == set(QUICK_BUNDLES)


def test_inference_ratios_are_finite_and_every_case_is_written(quick_run):
    for r in read_csv(quick_run / "inference.csv"):
        for key in ("e2e_s", "forward_in_run_s", "bare_forward_s", "ratio"):
            value = float(r[key])
            assert math.isfinite(value) and value > 0, (r["bundle"], key, r[key])
        assert int(r["cases"]) >= 1 and int(r["failed"]) == 0 and int(r["written"]) == int(r["cases"]), r["bundle"]
        assert r["weights"] == "untrained"


def test_recorded_network_calls_match_the_inferer_windows(quick_run):
    for r in read_csv(quick_run / "inference.csv"):
        roi, batch = json.loads(r["roi_size"]), int(r["sw_batch_size"])
        assert int(r["windows"]) >= 1
        for shape in (json.loads(s) for s in r["window_shapes"].split(";")):
            assert 1 <= shape[0] <= batch, (r["bundle"], shape, batch)
            spatial = shape[2:]
            assert len(spatial) == len(roi), (r["bundle"], shape, roi)
            assert all(w == s for w, s in zip(roi, spatial) if w > 0), (r["bundle"], shape, roi)


def test_training_rates_and_memory_are_positive(quick_run):
    for r in read_csv(quick_run / "training.csv"):
        assert r["bundle_dataset"] == "CacheDataset" and r["reference_dataset"] == "Dataset"
        assert int(r["reference_num_workers"]) == 0
        for key in ("bundle_samples_per_s", "reference_samples_per_s", "speedup"):
            assert math.isfinite(float(r[key])) and float(r[key]) > 0, (r["bundle"], key)
        assert int(r["samples_per_epoch"]) > 0
    for r in read_csv(quick_run / "memory.csv"):
        assert float(r["peak_rss_mib"]) > 0 and int(r["returncode"]) == 0 and int(r["written"]) >= 1, r


def test_report_and_chart(quick_run):
    report = (quick_run / "results.md").read_text()
    for heading in ("## Inference", "## Training", "## Peak memory", "untrained", "torch "):
        assert heading in report
    with Image.open(quick_run / "speed.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_forward_recorder_counts_calls_and_shapes_and_keeps_state_dict_keys():
    network = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
    keys = list(network.state_dict())
    recorder = bench.ForwardRecorder(network)
    assert list(network.state_dict()) == keys
    shapes = [(1, 1, 8, 8), (3, 1, 8, 8), (3, 1, 8, 8), (2, 1, 5, 7)]
    with torch.no_grad():
        for shape in shapes:
            network(torch.zeros(shape))
    assert recorder.shapes == shapes and all(c[1] == torch.float32 and c[2] >= 0 for c in recorder.calls)
    recorder.remove()
    network(torch.zeros(1, 1, 4, 4))
    assert len(recorder.calls) == 4
    calls_seen = []
    network.register_forward_pre_hook(lambda m, a: calls_seen.append(tuple(a[0].shape)))
    assert bench.replay_forward(network, recorder.calls, torch.device("cpu")) >= 0
    # one warm-up per distinct shape, then exactly the recorded calls in order
    assert calls_seen == [(1, 1, 8, 8), (3, 1, 8, 8), (2, 1, 5, 7)] + shapes


def test_throughput_counter_counts_the_samples_of_a_known_loader():
    loader = DataLoader(TensorDataset(torch.zeros(10, 2)), batch_size=4)  # batches of 4, 4, 2
    engine = Engine(lambda e, batch: None)
    counter = bench.ThroughputCounter()
    counter.attach(engine)
    engine.run(loader, max_epochs=3)
    assert [e["samples"] for e in counter.epochs] == [10, 10, 10]
    assert [e["iterations"] for e in counter.epochs] == [3, 3, 3]
    assert counter.rate(skip=1) > 0
    # MONAI engines leave the batch decollated, a list of sample dicts
    decollated = Engine(lambda e, batch: setattr(e.state, "batch", [{"image": 0}] * 3))
    counter = bench.ThroughputCounter()
    counter.attach(decollated)
    decollated.run([0, 1], max_epochs=2)
    assert [e["samples"] for e in counter.epochs] == [6, 6]


def test_stage_timer_keeps_classes_for_inversion():
    from monai.transforms import Compose, Flipd, Invertd

    timer = bench.StageTimer()
    flip = Compose([Flipd("image", spatial_axis=0)])
    timer.wrap_compose(flip, "preprocessing")
    image = torch.arange(6.0).reshape(1, 3, 2)
    data = flip({"image": image})
    assert isinstance(flip.transforms[0], Flipd) and type(flip.transforms[0]).__name__ == "Flipd"
    restored = Invertd("image", transform=flip, orig_keys="image")(data)
    assert torch.equal(restored["image"].as_tensor(), image)
    assert timer.seconds["preprocessing", "Flipd"] > 0


def test_peak_rss_of_a_child(tmp_path):
    code = "import numpy as np; a = np.ones(64 * 2**20 // 8); print(a.sum())"
    result = bench.peak_rss_of([sys.executable, "-c", code], tmp_path / "log.txt", timeout_s=120)
    assert result["returncode"] == 0 and result["peak_rss_mib"] > 64 and result["wall_s"] > 0


def test_settings_are_checked():
    first, second = BUNDLES[:2]
    s = bench.make_settings(quick=True, bundles=f"{describe(first).task},{second}")  # a task name or a bundle name
    assert s.bundles == (first, second)
    assert set(s.overrides) == {first, second}
    with pytest.raises(ValueError, match="unknown settings"):
        bench.make_settings(epochs=3)
    with pytest.raises(ValueError, match="unknown bundle"):
        bench.make_settings(bundles="spleen")
    with pytest.raises(ValueError, match="train_epochs"):
        bench.make_settings(train_epochs=1)


def test_quick_mode_adds_each_bundles_quick_overrides_under_the_given_ones():
    for bundle in BUNDLES:
        quick = describe(bundle).extra["speed"]["quick"]["overrides"]
        given = {"some_id": 1}
        s = bench.make_settings(quick=True, bundles=bundle, overrides={describe(bundle).task: given})
        assert s.overrides == {bundle: {**quick, **given}}, bundle
        assert bench.make_settings(bundles=bundle).overrides == {bundle: {}}, bundle
        # the worker rebuilds the settings from their dict: the same settings again
        assert bench.make_settings(**bench._settings_dict(s)) == s


def test_every_bundle_declares_generator_options_its_generator_accepts():
    for bundle in BUNDLES:
        profile = describe(bundle)
        generator = synthetic.generator(profile.task)
        speed = profile.extra["speed"]
        assert set(speed) == {"infer", "train", "memory", "quick", "target"} and set(speed["quick"]) <= {
            "infer", "train", "overrides"
        }, bundle  # fmt: skip
        assert 0 < speed["target"]["metric"] <= 1 and speed["target"]["what"], f"{bundle}: speed.target"
        assert speed["memory"].get("what"), f"{bundle}: speed.memory needs a 'what' for the report"
        for kind, function in (("infer", generator.write_inputs), ("memory", generator.write_inputs),
                               ("train", generator.write_dataset)):  # fmt: skip
            signature = inspect.signature(function).parameters
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
                signature = inspect.signature(generator.write_dataset).parameters  # options as write_dataset's
            parameters = set(signature) - {"output_dir", "folder", "count", "seed"}
            accepted = parameters | ({"what"} if kind == "memory" else set())
            for quick in (False, True):
                options = bench.generator_options(bundle, kind, quick)
                assert set(options) <= accepted, (bundle, kind, quick, sorted(set(options) - accepted))


def test_time_to_target_stops_at_the_first_validation_that_reaches_it(tmp_path):
    p = describe("retinal_vessel_unet")
    synthetic.write_dataset(p.task, tmp_path / "data", **{**p.quick["data"], "num_train": 4})
    values = {"dataset_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "train"),
              "ckpt_path": str(tmp_path / "models" / "model.pt"), "num_workers": 0, "val_interval": 1,
              "train#dataloader#batch_size": 2}  # fmt: skip
    run = training.train_for(p.root, values, budget_s=120, target=0.0)  # any validation reaches 0
    assert run["epochs"] == 1 and len(run["curve"]) == 1
    assert run["time_to_target_s"] == run["curve"][0][0] < 120
    assert (tmp_path / "models" / "model.pt").is_file()  # the best model of that validation
    assert bench.speed_section("retinal_vessel_unet")["target"]["metric"] == 0.8
