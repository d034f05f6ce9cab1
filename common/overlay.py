"""Small overlay pictures of a segmentation for the review page: the labels in colour over the grey image (the image
for 2D, three orthogonal planes through the predicted structures' centre for 3D), encoded as PNG bytes.

Only the planes are sampled, at the label's own grid, and the image is looked up through the two affines, so a
label written back in a 512 x 512 x 1000 input grid and an image still in the working grid cost three planes, not a
resampled volume. A case keeps only its PNG bytes (tens of kB), so a run over a large folder stays flat in memory.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from PIL import Image
from scipy import ndimage

from common.metrics.lesions import mask_box
from common.transforms import source_name

logger = logging.getLogger(__name__)

#: label colours (RGB), label 1 first; more labels than colours cycle
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180))
#: (fixed, rows, columns) world axes (RAS) of the three planes of a volume: axial, coronal, sagittal; rows and
#: columns run towards decreasing world coordinates (anterior / superior up, the patient's right on the left)
PLANES_3D = ((2, 1, 0), (1, 2, 0), (0, 2, 1))
_BACKGROUND, _GAP = 24, 4


def png_bytes(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB array (H, W, 3) as PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _spatial_affine(x: Any, dims: int) -> np.ndarray:
    """The (dims + 1)-square voxel-to-world affine of a MetaTensor (identity for a plain tensor)."""
    affine = np.asarray(x.affine.detach().cpu() if isinstance(x, MetaTensor) else np.eye(dims + 1), dtype=np.float64)
    if affine.shape[0] == dims + 1:
        return affine
    keep = [*range(dims), affine.shape[0] - 1]  # a 2D image with a 4x4 affine
    return affine[np.ix_(keep, keep)]


def _centre(label: torch.Tensor) -> np.ndarray:
    """Voxel coordinates of the centre of mass of ``label > 0`` (spatial), or of the grid when there is none."""
    found = np.asarray(label.detach().cpu()) > 0
    box = mask_box(found)  # the centre of mass inside the bounding box: a small structure in a large grid is cheap
    if box is None:
        return np.array([s // 2 for s in found.shape])
    return np.rint(np.asarray(ndimage.center_of_mass(found[box])) + [part.start for part in box]).astype(int)


def plane_indices(shape: Sequence[int], affine: np.ndarray, centre: Sequence[int]) -> list[tuple[np.ndarray, tuple]]:
    """Voxel indices (D, H, W) and physical size (mm, rows x columns) of the planes to show of a grid: the whole
    image for 2D (rows along the second axis, as a photograph is read), three orthogonal planes through ``centre``
    for 3D, each axis matched to the world axis it is closest to, so any orientation shows the same way."""
    dims = len(shape)
    spacing = np.linalg.norm(affine[:dims, :dims], axis=0)
    if dims == 2:
        index = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="xy"))
        return [(index, (shape[1] * spacing[1], shape[0] * spacing[0]))]
    rotation = affine[:3, :3]
    voxel_of_world = np.argmax(np.abs(rotation), axis=1)
    if sorted(voxel_of_world) != [0, 1, 2]:  # a grid at 45 degrees: keep the voxel axes
        voxel_of_world = np.arange(3)
    sign = np.sign(rotation[np.arange(3), voxel_of_world])
    planes = []
    for fixed, rows, columns in PLANES_3D:
        index = np.empty((3, shape[voxel_of_world[rows]], shape[voxel_of_world[columns]]), dtype=np.int64)
        for world, place in ((rows, (slice(None), None)), (columns, (None, slice(None)))):
            axis = voxel_of_world[world]
            steps = np.arange(shape[axis])
            index[axis] = (steps[::-1] if sign[world] >= 0 else steps)[place]  # decreasing world coordinate
        index[voxel_of_world[fixed]] = int(np.clip(centre[voxel_of_world[fixed]], 0, shape[voxel_of_world[fixed]] - 1))
        size = (index.shape[1] * spacing[voxel_of_world[rows]], index.shape[2] * spacing[voxel_of_world[columns]])
        planes.append((index, size))
    return planes


def _sample(values: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """Channel-first ``values`` at integer voxel ``index`` (D, H, W); NaN outside the grid."""
    shape = np.asarray(values.shape[1:])[:, None, None]
    inside = np.all((index >= 0) & (index < shape), axis=0)
    clipped = np.clip(index, 0, shape - 1)
    picked = values[(slice(None), *(torch.as_tensor(i, device=values.device) for i in clipped))].float().cpu()
    picked[:, ~torch.as_tensor(inside)] = float("nan")
    return picked


def _resize(plane: torch.Tensor, size: tuple[int, int], reduce: str) -> torch.Tensor:
    """A (H, W) plane at ``size``: enlarged by nearest neighbours, reduced by the mean (image) or max (labels)."""
    x = plane[None, None].float()
    larger = (max(size[0], x.shape[2]), max(size[1], x.shape[3]))
    if larger != tuple(x.shape[2:]):
        x = F.interpolate(x, size=larger, mode="nearest")
    x = F.adaptive_max_pool2d(x, size) if reduce == "max" else F.adaptive_avg_pool2d(x, size)
    return x[0, 0]


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label map that border another label (4-neighbours), inside the labels."""
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels > 0)


def overlay_png(image: Any, label: Any, size: int = 192, channel: int | None = None, alpha: float = 0.4) -> bytes:
    """PNG bytes of the labels of channel-first ``label`` (1, *spatial) in colour over the grey ``image`` (C, *any
    grid, mapped through both affines; the mean of the channels, or ``channel``): one plane for 2D, three for 3D,
    each scaled so its longer physical side is ``size`` pixels, side by side."""
    labels = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
    labels = labels[0]
    dims = labels.ndim
    label_affine, image_affine = _spatial_affine(label, dims), _spatial_affine(image, dims)
    values = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    values = values[[channel]] if channel is not None else values
    to_image = np.linalg.inv(image_affine) @ label_affine
    same_grid = tuple(values.shape[1:]) == tuple(labels.shape) and np.allclose(to_image, np.eye(dims + 1), atol=1e-3)
    pictures = []
    planes = plane_indices(tuple(labels.shape), label_affine, _centre(labels))
    for index, (height_mm, width_mm) in planes:
        found = labels[tuple(torch.as_tensor(i, device=labels.device) for i in index)].cpu()
        if not same_grid:
            flat = index.reshape(dims, -1).astype(np.float64)
            index = np.rint(to_image[:dims, :dims] @ flat + to_image[:dims, dims:]).astype(np.int64)
            index = index.reshape(dims, *found.shape)
        step = max(1, min(found.shape) // (2 * size))  # the grey image at twice the picture's size is enough
        index = index[:, ::step, ::step]
        grey = torch.nanmean(_sample(values, index), dim=0) if values.shape[0] > 1 else _sample(values, index)[0]
        scale = size / max(height_mm, width_mm, 1e-6)
        shape = (max(int(round(height_mm * scale)), 1), max(int(round(width_mm * scale)), 1))
        pictures.append((_resize(grey, shape, "mean"), _resize(found, shape, "max")))
    finite = torch.cat([g.flatten() for g, _ in pictures])
    finite = finite[torch.isfinite(finite)]
    low, high = np.percentile(finite.numpy(), (1, 99)) if finite.numel() else (0.0, 1.0)
    high = high if high > low else low + 1.0
    height = max(g.shape[0] for g, _ in pictures)
    width = sum(g.shape[1] for g, _ in pictures) + _GAP * (len(pictures) - 1)
    canvas = np.full((height, width, 3), _BACKGROUND, np.uint8)
    left = 0
    for grey, found in pictures:
        shade = np.nan_to_num(np.clip((grey.numpy() - low) / (high - low), 0, 1), nan=0.0)
        rgb = np.repeat(shade[..., None] * 255.0, 3, axis=2)
        classes = np.rint(found.numpy()).astype(np.int64)
        edges = _edges(classes)
        for value in np.unique(classes[classes > 0]):
            colour = np.asarray(PALETTE[(int(value) - 1) % len(PALETTE)], dtype=np.float64)
            inside = classes == value
            rgb[inside] = (1 - alpha) * rgb[inside] + alpha * colour
            rgb[inside & edges] = colour
        top = (height - rgb.shape[0]) // 2
        canvas[top : top + rgb.shape[0], left : left + rgb.shape[1]] = np.rint(rgb).astype(np.uint8)
        left += rgb.shape[1] + _GAP
    return png_bytes(canvas)


class Thumbnaild(MapTransform):
    """Put ``overlay_png`` of the labels under ``keys`` over the image under ``image_key`` into ``output_key`` (PNG
    bytes), at the end of inference post-processing (labels in the input's grid). A case whose picture fails is
    logged and gets none: the picture is for the review page and never stops a case.

    Args:
        keys: key of the labels (one channel, integer values).
        image_key: key of the image the labels are drawn over (any grid with an affine: the working grid is fine).
        output_key: key of the PNG bytes (read by ``common.report.ReviewReport``).
        size: pixels of the longer side of each plane.
        channel: the image channel shown in grey (None: the mean of the channels).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        image_key: str = "image",
        output_key: str = "thumbnail",
        size: int = 192,
        channel: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.output_key = image_key, output_key
        self.size, self.channel = size, channel

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                with torch.no_grad():
                    d[self.output_key] = overlay_png(d[self.image_key], d[key], self.size, self.channel)
            except Exception as e:  # noqa: BLE001 - the review picture must not fail the case
                d.pop(self.output_key, None)
                logger.warning("%s: no review picture (%s: %s)", source_name(d, self.image_key), type(e).__name__, e)
        return d
