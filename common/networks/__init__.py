"""Networks shared by several bundles."""

from common.networks.context_unet import ContextUNet
from common.networks.fcn import FCN
from common.networks.patch_cnn import DenseView, PatchCNN
from common.networks.rnn import ConvGRU, ReNet, ReNet2d, ReNet3d

__all__ = ["ContextUNet", "FCN", "DenseView", "PatchCNN", "ConvGRU", "ReNet", "ReNet2d", "ReNet3d"]
