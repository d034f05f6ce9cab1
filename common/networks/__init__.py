"""Networks shared by several bundles."""

from common.networks.fcn import FCN
from common.networks.patch_cnn import PatchCNN
from common.networks.rnn import ConvGRU, ReNet, ReNet2d, ReNet3d

__all__ = ["FCN", "PatchCNN", "ConvGRU", "ReNet", "ReNet2d", "ReNet3d"]
