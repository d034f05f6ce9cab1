"""Shared fixtures: paths, running bundles as users type them, and small synthetic datasets."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from common.profile import BundleProfile, bundle_names, bundle_scripts, describe

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "common" / "schemas" / "bundle_metadata_schema.json"
#: every bundle of the repository, for tests parametrized over all of them
BUNDLE_NAMES = bundle_names()


def load_module(path: Path, name: str) -> ModuleType:
    """Import a bundle script under a unique module name (every bundle has its own ``scripts`` package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


def monai_bundle(command: str, *args: str, **overrides: object) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle COMMAND ARGS --key value ...`` from the repository root, capturing the output."""
    cmd = [sys.executable, "-m", "monai.bundle", command, *args]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def config_list(bundle: Path, *names: str) -> str:
    """The ``--config_file`` argument for one config or a merged list of configs."""
    files = [str(bundle / "configs" / n) for n in names]
    return files[0] if len(files) == 1 else str(files)


def _without_progress(output: str) -> str:
    """A command's output without progress bars and blank lines, so that a failure shows what matters."""
    return "\n".join(line for line in output.splitlines() if line.strip() and "Loading dataset" not in line)


def check(result: subprocess.CompletedProcess) -> str:
    """Assert a bundle command succeeded and return its output."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, _without_progress(output)[-6000:]
    return output


def run_inference(bundle: Path, inputs: Path, outputs: Path, ckpt: Path, **overrides: object):
    """Run ``inference.json`` over the folder ``inputs`` into ``outputs``; return the finished process."""
    config = config_list(bundle, "inference.json")
    return monai_bundle(
        "run", config_file=config, bundle_root=bundle, input_dir=inputs, output_dir=outputs, ckpt_path=ckpt, **overrides
    )


def segment(bundle: Path, inputs: Path, outputs: Path, ckpt: Path, failures: int = 0, **overrides: object) -> str:
    """Run ``inference.json`` over the folder ``inputs`` into ``outputs``; assert it ended as it should (status 0,
    or, when ``failures`` cases are bad, status 1 after its summary line and a one-line error); return its output."""
    result = run_inference(bundle, inputs, outputs, ckpt, **overrides)
    if not failures:
        return check(result)
    output = result.stdout + result.stderr
    assert result.returncode == 1, _without_progress(output)[-6000:]
    assert f"; {failures} skipped, listed in {outputs / 'failed_cases.json'}" in result.stdout, result.stdout[-3000:]
    assert f"error: {failures} of " in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    return output


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def quick_benchmark(script: Path, folder: Path, timeout: int = 900, *args: str) -> Path:
    """Run a benchmark script's quick mode into ``folder`` as a user starts it (a fresh process, so torch sees the
    script's thread policy), with any further command-line ``args``; return the folder."""
    cmd = [sys.executable, str(script), "--output_dir", str(folder), "--quick", *args]
    check(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout))
    return folder


def assert_bundle_verifies(bundle: Path, config: str = "train.json", **net_options: object) -> None:
    """The metadata verifies offline against the kept schema, and ``network_def`` of ``config`` passes MONAI's
    ``verify_net_in_out`` (options such as ``n`` or ``any`` choose the test input's size)."""
    meta = bundle / "configs" / "metadata.json"
    assert "verified with no error" in check(monai_bundle("verify_metadata", meta_file=meta, filepath=SCHEMA))
    out = monai_bundle(
        "verify_net_in_out",
        "network_def",
        meta_file=meta,
        config_file=bundle / "configs" / config,
        bundle_root=bundle,
        **net_options,
    )
    assert "verified with no error" in check(out)


def epoch_losses(log: str) -> dict[int, list[float]]:
    """Per-iteration training losses from a bundle's StatsHandler log, grouped by epoch."""
    losses: dict[int, list[float]] = {}
    for epoch, loss in re.findall(r"Epoch: (\d+)/\d+, Iter: \d+/\d+ -- train_loss: ([0-9.]+)", log):
        losses.setdefault(int(epoch), []).append(float(loss))
    return losses


def pytest_collection_modifyitems(items: list) -> None:
    """Every test that needs a ``quick_run`` fixture (a bundle's quick demo run here, a benchmark's quick mode in
    the benchmarks' tests) is ``slow``; slow tests run last."""
    for item in items:
        if "quick_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


@dataclass
class QuickRun:
    """A bundle trained, evaluated and run on its test images by ``python -m synthetic.demo NAME --quick``."""

    profile: BundleProfile
    out: Path  #: the demo's output folder: data/, models/, train/, eval/, test_images/, inference/, overlays
    log: str  #: everything the demo printed (the training log included)

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def ckpt(self) -> Path:
        return self.out / "models" / "model.pt"

    @property
    def index(self) -> dict:
        return json.loads((self.data / "dataset.json").read_text())

    def segment(self, inputs: Path, outputs: Path, failures: int = 0, **overrides: object) -> str:
        """Run the bundle's inference with the quick run's weights and quick-mode overrides over ``inputs``."""
        overrides = {**self.profile.quick.get("overrides", {}), **overrides}
        return segment(self.profile.root, inputs, outputs, self.ckpt, failures, **overrides)

    def as_trained(self) -> dict:
        """The ``{"work", "ckpt", "log"}`` dict the training helpers below take."""
        return {"work": self.out, "ckpt": self.ckpt, "log": self.log}


_QUICK_RUNS: dict[str, QuickRun] = {}


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Callable[[str], QuickRun]:
    """``quick_run(NAME)``: the bundle's quick demo run, made once per test session and shared by every test."""

    def run(name: str) -> QuickRun:
        if name not in _QUICK_RUNS:
            out = tmp_path_factory.mktemp(f"quick_{name}")
            cmd = [sys.executable, "-m", "synthetic.demo", name, "--output_dir", str(out), "--quick"]
            result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
            _QUICK_RUNS[name] = QuickRun(describe(name), out, check(result))
        return _QUICK_RUNS[name]

    return run


def train_bundle(bundle: Path, dataset: Path, work: Path, configs: tuple[str, ...] = ("train.json",), **overrides):
    """Train a bundle through the CLI into ``work``; return ``{"work", "ckpt", "log"}``."""
    ckpt = work / "models" / "model.pt"
    log = check(
        monai_bundle(
            "run",
            config_file=config_list(bundle, *configs),
            bundle_root=bundle,
            dataset_dir=dataset,
            ckpt_path=ckpt,
            output_dir=work / "train",
            **overrides,
        )
    )
    return {"work": work, "ckpt": ckpt, "log": log}


def assert_resumes_one_epoch(bundle: Path, trained: dict, dataset: Path, epochs: int, **overrides) -> None:
    """Resume a finished run with one more epoch, validated: the trainer state and the best metric are restored,
    only that epoch trains, and the best model is overwritten only if that epoch beats the restored best."""
    import torch

    ckpt = Path(trained["ckpt"])
    last = max(ckpt.parent.glob("checkpoint_*.pt"), key=lambda p: p.stat().st_mtime)
    before = torch.load(last, map_location="cpu", weights_only=True)["best_model"]
    best_mtime = ckpt.stat().st_mtime_ns
    resumed = check(
        monai_bundle(
            "run",
            config_file=config_list(bundle, "train.json"),
            bundle_root=bundle,
            dataset_dir=dataset,
            ckpt_path=ckpt,
            output_dir=trained["work"] / "train",
            max_epochs=epochs + 1,
            resume=True,
            **{**overrides, "val_interval": 1},
        )
    )
    assert "Restored all variables from" in resumed
    assert sorted(epoch_losses(resumed)) == [epochs + 1], "resumed run should train only the remaining epoch"
    previous, previous_epoch = before["best_metric"], before["best_metric_epoch"]
    assert 0 < previous_epoch <= epochs
    assert f"has validation metric {previous:.4f} (epoch {previous_epoch})" in resumed, "best metric not restored"
    best, best_epoch = re.findall(r"Key metric: \S+ best value: ([0-9.e-]+) at epoch: (\d+)", resumed)[-1]
    if int(best_epoch) == epochs + 1:  # the resumed epoch beat the restored best: the best model is replaced
        assert float(best) > previous
        assert ckpt.stat().st_mtime_ns != best_mtime, "a better model was not saved"
    else:  # the restored best stands: a worse epoch must not overwrite the best model
        assert float(best) == pytest.approx(previous) and int(best_epoch) == previous_epoch
        assert ckpt.stat().st_mtime_ns == best_mtime, "the best model was overwritten by a worse one"
    epoch_files = sorted(p.name for p in ckpt.parent.glob("checkpoint_epoch=*.pt"))
    assert len(epoch_files) <= 2 and f"checkpoint_epoch={epochs + 1}.pt" in epoch_files, epoch_files


def assert_torchscript_matches(bundle: Path, ckpt: Path, tmp_path: Path, x, config: str = "train.json") -> None:
    """``ckpt_export`` the trained ``network_def`` and check the TorchScript model against the eager one on ``x``."""
    import torch
    from monai.bundle import ConfigParser

    ts_path = tmp_path / "model.ts"
    check(
        monai_bundle(
            "ckpt_export",
            "network_def",
            filepath=ts_path,
            ckpt_file=ckpt,
            meta_file=bundle / "configs" / "metadata.json",
            config_file=bundle / "configs" / config,
            bundle_root=bundle,
        )
    )
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / config)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    net.eval()
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(torch.jit.load(str(ts_path), map_location="cpu")(x), expected, rtol=1e-4, atol=1e-5)


def assert_torchrun_trains_one_epoch(bundle: Path, dataset: Path, tmp_path: Path, port: int, **overrides) -> None:
    """Train one epoch with ``multi_gpu_train.json`` under ``torchrun --nproc_per_node 2`` (gloo on CPU); the saved
    weights must not carry the DistributedDataParallel ``module.`` prefix."""
    import torch

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        "-m", "monai.bundle", "run",
        "--config_file", config_list(bundle, "train.json", "multi_gpu_train.json"),
        "--bundle_root", str(bundle), "--dataset_dir", str(dataset),
        "--ckpt_path", str(tmp_path / "models" / "model.pt"), "--output_dir", str(tmp_path / "train"),
    ]  # fmt: skip
    for key, value in {"max_epochs": 1, "val_interval": 1, "num_workers": 0, **overrides}.items():
        cmd += [f"--{key}", str(value)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "SIGABRT" in result.stdout + result.stderr:
        # seen once in CI on a loaded 2-core machine and never reproduced (0 in 9 reruns, with and without load): a
        # rank aborted in native code ("terminate called without an active exception") after loading its data;
        # one rerun tells that apart from a real failure, which fails both times
        warnings.warn("torchrun: a rank aborted (SIGABRT); rerunning once", stacklevel=2)
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, _without_progress(result.stdout + result.stderr)[-6000:]
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP wrapper leaked into the saved weights"


def training_preprocessing(profile: BundleProfile) -> Callable[[dict], dict]:
    """The bundle's deterministic training preprocessing (``preprocessing`` of its train.json), built as MONAI
    builds it, with the bundle's own ``scripts`` package importable."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(profile.config("train.json"))
    parser["bundle_root"] = str(profile.root)
    with bundle_scripts(profile.root):
        return Compose(parser.get_parsed_content("preprocessing"))


def world(affine, voxels):
    """World coordinates (N, 3) of voxel coordinates (N, 3) under a 4x4 affine."""
    import numpy as np

    return voxels @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def load_ras(path: Path):
    """Load an image through MONAI as the bundles do: LoadImage, EnsureChannelFirst, Orientation RAS."""
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation

    return Compose([LoadImage(image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS")])(str(path))


def assert_same_through_monai(folder: Path, ras, lps) -> None:
    """Two phantoms of one anatomy stored in RAS and LPS voxel order become, loaded as the bundles load them, the
    same array on the same grid."""
    import nibabel as nib
    import numpy as np

    for name, phantom in (("ras", ras), ("lps", lps)):
        nib.save(nib.Nifti1Image(phantom.image, phantom.affine), folder / f"{name}.nii.gz")
    a, b = load_ras(folder / "ras.nii.gz"), load_ras(folder / "lps.nii.gz")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-4)


def dataset_entries(root: Path) -> list[dict]:
    """The training and test entries of ``root/dataset.json``."""
    index = json.loads((root / "dataset.json").read_text())
    return index["training"] + index["test"]


def synthetic_fixture(task: str, **options):
    """A module-scoped fixture: a synthetic data set of ``task`` in a fresh folder (``options`` go to its generator)."""

    @pytest.fixture(scope="module")
    def synthetic_dir(tmp_path_factory) -> Path:
        from synthetic import write_dataset

        root = tmp_path_factory.mktemp(f"{task}_synthetic")
        write_dataset(task, root, **options)
        return root

    return synthetic_dir


def run_prepare(script: Path, source_flag: str, source: Path, out: Path) -> dict:
    """Run a bundle's ``prepare_<dataset>.py SOURCE_FLAG SOURCE --output_dir OUT`` as a user types it; assert it
    succeeded and printed the written index; return that ``dataset.json``."""
    cmd = [sys.executable, str(script), source_flag, str(source), "--output_dir", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert str(out / "dataset.json") in result.stdout
    return json.loads((out / "dataset.json").read_text())


def train_briefly(net, x, target, steps: int, lr: float) -> list[float]:
    """Train ``net`` on one batch with Adam and cross-entropy for ``steps`` steps; return the losses."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), target)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    return losses


def generator_options(name: str) -> dict:
    """The bundle's quick-mode generator options (image size and the like), without the data set's counts."""
    options = dict(describe(name).quick.get("data", {}))
    return {k: v for k, v in options.items() if k not in ("num_train", "num_test", "seed")}


def quick_overrides(name: str) -> dict:
    """The bundle's quick-mode inference overrides (small windows, no loader workers)."""
    return dict(describe(name).quick.get("overrides", {}))


@pytest.fixture(scope="session")
def untrained(tmp_path_factory) -> dict[str, Path]:
    """A ``model.pt`` of freshly initialised weights for every bundle."""
    import torch

    from common.verify import build_network

    folder = tmp_path_factory.mktemp("untrained")
    weights = {}
    for name in BUNDLE_NAMES:
        profile = describe(name)
        weights[name] = folder / f"{name}.pt"
        torch.save(build_network(profile.root, "configs/inference.json").state_dict(), weights[name])
    return weights
