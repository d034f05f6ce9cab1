"""The RNN context module chosen from the configs: ``train_rnn.json`` in the retinal and cardiac bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import UNet

from common.networks import FCN, ContextUNet, ReNet2d
from conftest import ROOT, check, config_list, epoch_losses, monai_bundle
from synthetic import retinal as synthetic

RETINAL = ROOT / "bundles" / "retinal_vessel_unet"
CARDIAC = ROOT / "bundles" / "cardiac_mr_fcn"


def network_of(bundle: Path, *configs: str) -> torch.nn.Module:
    """``network_def`` of the merged configs."""
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / name) for name in configs])
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize(
    "bundle, kind, shape",
    [(RETINAL, ContextUNet, (2, 3, 72, 104)), (CARDIAC, FCN, (2, 1, 90, 70))],
)
def test_train_rnn_config_puts_a_renet_at_the_bottleneck(bundle, kind, shape):
    plain, rnn = network_of(bundle, "train.json"), network_of(bundle, "train.json", "train_rnn.json")
    assert isinstance(rnn, kind) and any(isinstance(m, ReNet2d) for m in rnn.modules())
    assert not any(isinstance(m, ReNet2d) for m in plain.modules())
    # the RNN version is the plain network plus the context module's weights
    (renet,) = [m for m in rnn.modules() if isinstance(m, ReNet2d)]
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(rnn) == count(plain) + count(renet)
    # inference merged with train_rnn.json builds the same network, so trained weights load
    served = network_of(bundle, "inference.json", "train_rnn.json")
    served.load_state_dict(rnn.state_dict())
    rnn.eval()
    x = torch.rand(*shape)
    with torch.no_grad():
        out = rnn(x)
    assert out.shape[2:] == x.shape[2:]


def test_context_unet_sees_the_far_side_of_the_image_and_plain_unet_does_not():
    kwargs = dict(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=[8, 16, 32],
        strides=[2, 2],
        num_res_units=1,
        norm="batch",
    )
    torch.manual_seed(0)
    plain = UNet(**kwargs).eval()
    context = ReNet2d(32, 8)
    torch.nn.init.normal_(context.proj.weight, std=0.5)  # the projection starts at zero (identity); give it weight
    with_rnn = ContextUNet(**kwargs, context=context).eval()
    x = torch.rand(1, 1, 160, 160)
    far = x.clone()
    far[0, 0, :8, :8] += 5.0  # a change in one corner
    with torch.no_grad():
        plain_change = (plain(far) - plain(x))[0, :, -8:, -8:].abs().max()  # seen in the opposite corner?
        rnn_change = (with_rnn(far) - with_rnn(x))[0, :, -8:, -8:].abs().max()
    assert float(plain_change) == 0.0, "a small U-Net's receptive field should not span the image"
    assert float(rnn_change) > 1e-6, "the ReNet should carry the change across the image"


def test_retinal_bundle_trains_and_serves_with_the_rnn_context(tmp_path):
    data = tmp_path / "data"
    synthetic.write_dataset(str(data), num_train=4, num_test=1, size=96, seed=5)
    ckpt = tmp_path / "models" / "model.pt"
    log = check(
        monai_bundle(
            "run",
            config_file=config_list(RETINAL, "train.json", "train_rnn.json"),
            bundle_root=RETINAL,
            dataset_dir=data,
            ckpt_path=ckpt,
            output_dir=tmp_path / "train",
            max_epochs=2,
            val_interval=1,
            num_workers=0,
        )
    )
    assert sorted(epoch_losses(log)) == [1, 2]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert any("proj" in key for key in state), "the saved model lacks the context module"
    entry = json.loads((data / "dataset.json").read_text())["test"][0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / Path(entry["image"]).name).write_bytes((data / entry["image"]).read_bytes())
    check(
        monai_bundle(
            "run",
            config_file=config_list(RETINAL, "inference.json", "train_rnn.json"),
            bundle_root=RETINAL,
            input_dir=inputs,
            output_dir=tmp_path / "out",
            ckpt_path=ckpt,
        )
    )
    assert list((tmp_path / "out").glob("*_seg.png"))
