"""Transforms MONAI lacks: input checks with messages that name the file, and atomic image saving."""

from __future__ import annotations

import os
import shutil
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SaveImage


def source_name(data: Mapping[Hashable, Any], key: Hashable) -> str:
    """Name of the file that ``data[key]`` was read from (the key itself when unknown)."""
    value = data.get(key)
    if isinstance(value, MetaTensor):
        name = value.meta.get("filename_or_obj")
        if isinstance(name, (list, tuple)):
            name = ", ".join(str(n) for n in name)
        if name:
            return str(name)
    return f"<{key}>"


class CheckImaged(MapTransform):
    """Reject bad inputs with one clear message naming the file: channel count, dimensions, emptiness, NaN, label
    values, shape mismatch.

    Args:
        keys: keys of channel-first images to check.
        channels: expected channel count per key (keys not listed are not checked for channels).
        reference_key: spatial shapes of all ``keys`` must equal the shape of this key.
        spatial_dims: expected number of spatial dimensions (e.g. 3 for a volume); ``None`` accepts any.
        max_label: per key, the largest class index a label may hold; its values must be integers in 0..max.
        allow_missing_keys: skip keys absent from the data.
    """

    def __init__(
        self,
        keys: KeysCollection,
        channels: Mapping[str, int] | None = None,
        reference_key: str | None = "image",
        spatial_dims: int | None = None,
        max_label: Mapping[str, int] | None = None,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = dict(channels or {})
        self.reference_key = reference_key
        self.spatial_dims = spatial_dims
        self.max_label = dict(max_label or {})

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img, name = d[key], source_name(d, key)
            if self.spatial_dims is not None and img.ndim - 1 != self.spatial_dims:
                raise ValueError(
                    f"{name}: the {key} has {img.ndim - 1} spatial dimension(s) (shape {tuple(img.shape[1:])}), "
                    f"expected {self.spatial_dims}."
                )
            if img.numel() == 0 or min(img.shape[1:], default=0) == 0:
                raise ValueError(f"{name}: the {key} is empty (shape {tuple(img.shape[1:])}).")
            expected = self.channels.get(str(key))
            if expected is not None and img.shape[0] != expected:
                raise ValueError(f"{name}: the {key} has {img.shape[0]} channel(s), expected {expected}.")
            if torch.is_floating_point(torch.as_tensor(img)) and not torch.isfinite(torch.as_tensor(img)).all():
                raise ValueError(f"{name}: the {key} contains NaN or infinite values.")
            top = self.max_label.get(str(key))
            if top is not None:
                values = torch.unique(torch.as_tensor(img))
                bad = values[(values < 0) | (values > top) | (values != torch.round(values))]
                if bad.numel():
                    raise ValueError(f"{name}: the {key} holds values {bad[:5].tolist()} outside the classes 0..{top}.")
            ref = d.get(self.reference_key) if self.reference_key else None
            if ref is not None and key != self.reference_key and tuple(img.shape[1:]) != tuple(ref.shape[1:]):
                raise ValueError(
                    f"{name}: the {key} has spatial shape {tuple(img.shape[1:])} but its "
                    f"{self.reference_key} {source_name(d, self.reference_key)} has {tuple(ref.shape[1:])}."
                )
        return d


class AtomicSaveImaged(MapTransform):
    """``SaveImaged`` that writes into a hidden folder and then renames, so an output file is complete or absent.

    Args:
        keys: keys of the images to save.
        output_dir: final folder of the files.
        kwargs: any other argument of ``monai.transforms.SaveImage`` (``output_postfix``, ``output_ext``, ...).
    """

    def __init__(self, keys: KeysCollection, output_dir: str, allow_missing_keys: bool = False, **kwargs: Any):
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.partial_dir = self.output_dir / f".partial-{os.getpid()}"
        kwargs.setdefault("separate_folder", False)
        kwargs.setdefault("print_log", False)
        self.saver = SaveImage(output_dir=str(self.partial_dir), savepath_in_metadict=True, **kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.saver(d[key])
            written = Path(d[key].meta["saved_to"])
            final = self.output_dir / written.relative_to(self.partial_dir)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(written, final)
            d[key].meta["saved_to"] = str(final)
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        return d
