"""What the project's tools know about a bundle, read from the bundle itself: ``configs/metadata.json`` (network
dimensions, classes, input channels) and ``tooling.json`` (synthetic task, quick-mode and demo settings, metric keys).

Tests, the demo and the benchmarks call :func:`describe` and never branch on a bundle's name, so a new bundle
needs only its own folder and its generator (see ``docs/adding_a_bundle.md``).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the repository's bundles folder
BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


@dataclass(frozen=True)
class BundleProfile:
    """One bundle as the tools see it."""

    name: str
    root: Path
    task: str  #: the synthetic generator's task name (``python -m synthetic TASK``)
    network_dims: int  #: 2 for a network run on 2D images or slices, 3 for a 3D network
    image_dims: int  #: spatial dimensions of the images it reads (a 2D network may read 3D volumes)
    classes: dict[int, str]  #: class index -> name, background included
    channels: dict[int, str]  #: input channel index -> name (modalities or colour channels)
    modality: str  #: the imaging modality of the inputs (metadata's ``modality``: CT, MR, ...)
    output_ext: str | None  #: extension of the written segmentations; None: the input's own
    dice_keys: dict[int, str]  #: class index -> the evaluation summary's Dice key for that class
    network_check: dict[str, Any]  #: ``config`` and ``options`` of ``monai.bundle verify_net_in_out``
    demo: dict[str, Any]  #: ``data`` (generator options) and ``train`` (overrides) of the full demo
    quick: dict[str, Any]  #: the same for the quick mode (tests, CI), plus its expectations
    extra: dict[str, Any] = field(default_factory=dict)  #: any other keys of ``tooling.json``

    @property
    def is_multimodal(self) -> bool:
        """Whether a case is several files, one per modality (``<case>_0000``...) rather than one image."""
        return self.image_dims == 3 and len(self.channels) > 1

    def config(self, name: str) -> Path:
        """The path of one of the bundle's config files."""
        return self.root / "configs" / name


def bundle_names() -> list[str]:
    """The names of the repository's bundles (folders of ``bundles/`` with a ``tooling.json``)."""
    return sorted(p.parent.name for p in BUNDLES.glob("*/tooling.json"))


def describe(bundle: str | Path) -> BundleProfile:
    """The profile of a bundle given by name (a folder of ``bundles/``) or by path."""
    root = Path(bundle) if Path(bundle).is_dir() else BUNDLES / str(bundle)
    tooling_path = root / "tooling.json"
    if not tooling_path.is_file():
        raise FileNotFoundError(f"{tooling_path}: no such file; a bundle declares what the tools need there")
    tooling = json.loads(tooling_path.read_text())
    meta = json.loads((root / "configs" / "metadata.json").read_text())["network_data_format"]
    image, pred = meta["inputs"]["image"], meta["outputs"]["pred"]
    known = {"task", "image_dims", "output_ext", "dice_keys", "network_check", "demo", "quick"}
    return BundleProfile(
        name=root.name,
        root=root.resolve(),
        task=tooling["task"],
        network_dims=len(image["spatial_shape"]),
        image_dims=int(tooling["image_dims"]),
        classes={int(k): v for k, v in pred["channel_def"].items()},
        channels={int(k): v for k, v in image["channel_def"].items()},
        modality=str(image.get("modality", "")),
        output_ext=tooling.get("output_ext"),
        dice_keys={int(k): v for k, v in tooling["dice_keys"].items()},
        network_check=tooling.get("network_check", {"config": "train.json", "options": {}}),
        demo=tooling["demo"],
        quick=tooling["quick"],
        extra={k: v for k, v in tooling.items() if k not in known and not k.startswith("_")},
    )


def _forget_bundle_scripts() -> None:
    """Forget every imported ``scripts`` package (each bundle's own code has that name)."""
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]


@contextlib.contextmanager
def bundle_scripts(root: str | Path) -> Iterator[None]:
    """Inside the block, the bundle at ``root`` has its own code importable as ``scripts`` (its configs'
    ``scripts.<module>`` targets), as MONAI's run makes it; no other bundle's ``scripts`` is imported before or after
    it."""
    _forget_bundle_scripts()
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        _forget_bundle_scripts()
