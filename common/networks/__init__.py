"""Networks shared by several bundles."""

from common.networks.fcn import FCN

__all__ = ["FCN"]
