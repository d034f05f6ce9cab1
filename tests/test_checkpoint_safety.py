"""A checkpoint is data, never code: every MONAI version the package allows loads weights only, and a crafted
``model.pt`` whose unpickling would run a command is refused by a bundle without running it."""

from __future__ import annotations

import configparser
import os

import torch
from packaging.requirements import Requirement

from conftest import ROOT, run_inference
from synthetic.retinal import write_image


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_allowed_monai_versions_load_checkpoints_weights_only():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requirements = [Requirement(line) for line in config["options"]["install_requires"].split("\n") if line.strip()]
    monai = next(r for r in requirements if r.name == "monai")
    # 1.5.0's CheckpointLoader calls torch.load(weights_only=False); 1.4.x relies on torch's default (False before 2.6)
    assert not monai.specifier.contains("1.5.0") and not monai.specifier.contains("1.4.0")
    assert monai.specifier.contains("1.5.1") and monai.specifier.contains("1.6.1")


def test_crafted_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    ckpt = tmp_path / "model.pt"
    torch.save({"model": _Payload(str(marker))}, ckpt)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_image(str(inputs / "eye.png"), 96, 96, seed=1)
    bundle = ROOT / "bundles" / "retinal_vessel_unet"
    result = run_inference(bundle, inputs, tmp_path / "out", ckpt)
    assert result.returncode != 0, result.stdout[-2000:]
    output = result.stdout + result.stderr
    assert "Weights only load failed" in output or "weights_only" in output, output[-2000:]
    assert not marker.exists(), "the checkpoint's payload ran"
    assert not (tmp_path / "out" / "eye_seg.png").exists()
