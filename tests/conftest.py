"""Shared fixtures: paths, running bundles as users type them, and small synthetic datasets."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
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


def check(result: subprocess.CompletedProcess) -> str:
    """Assert a bundle command succeeded and return its output."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


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
