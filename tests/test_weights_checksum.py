"""Weights listed in a bundle's ``large_files.yml`` (every exported bundle has one) are checked against their
checksum before inference or evaluation loads them: a corrupted ``model.pt`` stops the run with one line."""

from __future__ import annotations

import shutil

import pytest
import torch

from common.bundle_archive import BundleError, check_weights, write_large_files
from common.export import build_network
from conftest import ROOT, run_inference
from synthetic.retinal import write_image

BUNDLE = ROOT / "bundles" / "retinal_vessel_unet"


@pytest.fixture
def shipped(tmp_path):
    """A copy of the retinal bundle with untrained weights listed in ``large_files.yml``, as an export has them."""
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("__pycache__", "models", "eval", "logs"))
    (root / "models").mkdir()
    torch.save(build_network(root).state_dict(), root / "models" / "model.pt")
    write_large_files(root, ["models/model.pt"])
    return root


def _flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_listed_weights_pass_and_unlisted_weights_are_not_checked(shipped, tmp_path):
    check_weights(shipped, shipped / "models" / "model.pt")
    other = tmp_path / "my_own.pt"
    other.write_bytes(b"anything: a lab's own training is not in large_files.yml")
    check_weights(shipped, other)
    check_weights(BUNDLE, other)  # no large_files.yml: nothing to check against


def test_a_flipped_byte_is_refused_naming_the_file(shipped):
    _flip_one_byte(shipped / "models" / "model.pt")
    with pytest.raises(BundleError, match=r"model\.pt: its sha256 .* is not the .* listed in .*large_files\.yml"):
        check_weights(shipped, shipped / "models" / "model.pt")


def test_inference_with_corrupted_weights_stops_before_writing_anything(shipped, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_image(str(inputs / "eye.png"), 96, 96, seed=1)
    _flip_one_byte(shipped / "models" / "model.pt")
    result = run_inference(shipped, inputs, tmp_path / "out", shipped / "models" / "model.pt")
    assert result.returncode != 0
    assert "the weights are corrupted or were replaced" in result.stdout + result.stderr
    assert not (tmp_path / "out" / "eye_seg.png").exists()


def test_missing_weights_are_refused_with_the_fix(tmp_path):
    with pytest.raises(BundleError, match=r"model.pt: no weights there; train the bundle first .* --ckpt_path"):
        check_weights(BUNDLE, tmp_path / "model.pt")
