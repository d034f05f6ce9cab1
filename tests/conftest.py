"""Shared fixtures: paths, running bundles as users type them, and small synthetic datasets."""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "common" / "schemas" / "bundle_metadata_schema.json"


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


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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


@pytest.fixture(scope="session")
def retinal_bundle() -> Path:
    """Path of the retinal vessel bundle."""
    return ROOT / "bundles" / "retinal_vessel_unet"


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
    """Resume a finished run with one more epoch: the trainer state is restored and only that epoch trains."""
    resumed = check(
        monai_bundle(
            "run",
            config_file=config_list(bundle, "train.json"),
            bundle_root=bundle,
            dataset_dir=dataset,
            ckpt_path=trained["ckpt"],
            output_dir=trained["work"] / "train",
            max_epochs=epochs + 1,
            resume=True,
            **overrides,
        )
    )
    assert "Restored all variables from" in resumed
    assert sorted(epoch_losses(resumed)) == [epochs + 1], "resumed run should train only the remaining epoch"


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
