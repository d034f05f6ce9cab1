"""Run a bundle exactly as a user types it, ``python -m monai.bundle run ...``, from scripts such as the demos."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def bundle_command(bundle: str | Path, configs: Sequence[str], **overrides: object) -> list[str]:
    """The command line running ``configs`` (file names in ``bundle/configs``, merged in order) with overrides."""
    bundle = Path(bundle)
    files = [str(bundle / "configs" / name) for name in configs]
    config_arg = files[0] if len(files) == 1 else str(files)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg, "--bundle_root", str(bundle)]
    if (bundle / "configs" / "logging.conf").is_file():
        cmd += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def run_bundle(bundle: str | Path, configs: Sequence[str], **overrides: object) -> None:
    """Print and run a bundle command, raising ``CalledProcessError`` when it fails."""
    cmd = bundle_command(bundle, configs, **overrides)
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
