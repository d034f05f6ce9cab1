"""Synthetic chest CT phantoms (NIfTI, Hounsfield units) with lung nodule labels, for tests and demos.

Each case is an axial CT stack of a thorax built in world coordinates (RAS+, mm, x to the patient's right) and
sampled on the scanner's voxel grid: air (-1000 HU) around an elliptical body (270-340 mm wide), a subcutaneous fat
layer (-110..-90 HU), the chest-wall muscle (35..55 HU), ribs (cortical bone 500..900 HU, slanted bands every 28-34
mm along the body axis, interrupted at the sternum), the spine at the back (a vertebral body of marrow 200..300 HU
in a cortical shell), the mediastinum and heart (soft tissue 30..50 HU) between two lung fields (-870..-830 HU with a
smooth 15 HU texture) that taper towards the apices. Each lung holds a tree of pulmonary vessels (20..50 HU, radius
0.8-3.5 mm, branching from the hilum) and the case holds 1-4 solid nodules (0..60 HU): ellipsoids of 3-30 mm
(diameter, log-uniform), about a third of them touching the pleura (juxtapleural), centred on a voxel so that even
the smallest holds voxels, and kept apart so that each is one connected component (26-connectivity). The image is
blurred by the CT point-spread function (0.7 mm), given Gaussian noise (10-25 HU), rounded, clipped to
-1024..3071 and stored as int16. Labels (uint8): 0 background, 1 nodule (the part of each ellipsoid in the lung).

Geometry: a ``size`` x ``size`` matrix (default 160) over a 300-360 mm field of view, slices 1.25-2.5 mm apart over
150 mm (``spacing`` and ``num_slices`` give any grid). Every other case of ``write_dataset`` is stored LPS-ordered
(affine ``diag(-dx, -dy, dz)``, as DICOM-to-NIfTI converters write it), the others RAS-ordered; the anatomy is the
same in world coordinates, random per case and deterministic per seed. Layout written (``lung_XXX``)::

    imagesTr/lung_000.nii.gz   int16 HU      labelsTr/lung_000.nii.gz   uint8 0/1
    imagesTs/..., labelsTs/...  test cases, labelled
    dataset.json  {"training": [{"image", "label", "subject", "orientation", "nodule_count",
                   "nodules": [{"centre_mm", "diameter_mm", "volume_mm3"}, ...]}], "test": [...]}

The known truth is measured from the written label (``measure``): the nodules are its 26-connected components,
largest first, with their centroid in world (RAS+) mm, volume (mm3) and equivalent-sphere diameter
``(6 V / pi)^(1/3)``.

Command line::

    python -m synthetic lung --output_dir DIR --num_train 16 --num_test 4
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from synthetic.fields import oriented_cases, save_pair, write_images, write_splits

NODULE = 1
LABELS = {"0": "background", "1": "nodule"}
#: nodule diameter range (mm) and count range per case
NODULE_DIAMETER = (3.0, 30.0)
NODULE_COUNT = (1, 4)
#: share of nodules placed against the pleura
PLEURAL_SHARE = 0.35
HU_RANGES = {
    "fat": (-110.0, -90.0),
    "muscle": (35.0, 55.0),
    "bone": (500.0, 900.0),
    "marrow": (200.0, 300.0),
    "mediastinum": (30.0, 50.0),
    "lung": (-870.0, -830.0),
    "vessel": (20.0, 50.0),
    "nodule": (0.0, 60.0),
}
PSF_MM = 0.7
_CUBE = np.ones((3, 3, 3), bool)  # 26-connectivity
#: the index entries of the written ``dataset.json``
DATASET = {
    "name": "SyntheticLungNoduleCT",
    "description": "Synthetic chest CT phantoms in HU with lung nodule labels (python -m synthetic lung).",
    "modality": {"0": "CT"},
    "labels": LABELS,
    "tensorImageSize": "3D",
}


@dataclass
class Phantom:
    """One generated case: the image, its label and affine, and what it was made of."""

    image: np.ndarray  # int16 HU, (X, Y, Z)
    label: np.ndarray  # uint8 0/1, (X, Y, Z)
    affine: np.ndarray  # 4x4 voxel-to-world (RAS+, mm)
    lung: np.ndarray  # bool lung fields (X, Y, Z)
    nodules: list[dict[str, Any]]  # as placed: centre_mm (world), semi_axes_mm, pleural, hu
    orientation: str  # "RAS" or "LPS"


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (mm) of points ``p`` (..., 3) to the segment a-b."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.linalg.norm(p - a - t[..., None] * ab, axis=-1)


def _vessel_tree(rng: np.random.Generator, hilum: np.ndarray, side: float) -> list[tuple[np.ndarray, ...]]:
    """Segments (start, end, radius) of one lung's vessel tree, branching outwards from the hilum."""
    segments = []
    stack = []
    for _ in range(3):
        direction = np.array([side * rng.uniform(0.5, 1.0), rng.uniform(-0.7, 0.7), rng.uniform(-1.0, 1.0)])
        stack.append((hilum, direction / np.linalg.norm(direction), rng.uniform(40, 60), 3.5, 0))
    while stack:
        start, direction, length, radius, depth = stack.pop()
        end = start + length * direction
        segments.append((start, end, radius))
        if depth < 3:
            for _ in range(2):
                turn = direction + rng.normal(0, 0.5, 3)
                stack.append((end, turn / np.linalg.norm(turn), 0.75 * length, max(0.8, 0.7 * radius), depth + 1))
    return segments


def _grid(rng: np.random.Generator, size: int, num_slices: int | None, spacing: Sequence[float] | None):
    """Voxel centre coordinates (mm, centred on 0) along each axis and the spacing."""
    if spacing is not None:
        if len(spacing) != 3:
            raise ValueError(f"spacing must give 3 values (mm), got {spacing}.")
        spacing_mm = np.asarray(spacing, float)
    else:
        pixel = rng.uniform(300.0, 360.0) / size
        spacing_mm = np.array([pixel, pixel, rng.uniform(1.25, 2.5)])
    slices = num_slices or int(round(150.0 / spacing_mm[2]))
    counts = (size, size, slices)
    return [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(counts, spacing_mm)], spacing_mm


def build_phantom(
    seed: int,
    size: int = 160,
    num_slices: int | None = None,
    spacing: Sequence[float] | None = None,
    orientation: str | None = None,
    nodule_diameter: Sequence[float] = NODULE_DIAMETER,
    pleural_share: float = PLEURAL_SHARE,
) -> Phantom:
    """Build one chest CT phantom; ``orientation`` ("RAS"/"LPS") defaults to a draw from the seed."""
    if orientation not in (None, "RAS", "LPS"):
        raise ValueError(f"orientation must be 'RAS' or 'LPS', got {orientation!r}.")
    rng = np.random.default_rng(seed)
    lps = bool(rng.integers(2)) if orientation is None else orientation == "LPS"
    axes, spacing_mm = _grid(rng, size, num_slices, spacing)
    hu = {name: rng.uniform(*r) for name, r in HU_RANGES.items()}
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    a, b = rng.uniform(135, 170), rng.uniform(95, 125)  # body half-width and half-depth
    scale = min(1.0, 0.48 * size * spacing_mm[0] / a)  # a narrow field of view shrinks the body to fit
    a, b = a * scale, b * scale
    fat, wall = rng.uniform(8, 20) * scale, rng.uniform(8, 14) * scale
    ellipse = np.sqrt((x / a) ** 2 + (y / b) ** 2)  # 1 on the skin
    inner = np.sqrt((x / (a - fat - wall)) ** 2 + (y / (b - fat - wall)) ** 2)  # 1 inside the muscle wall
    shape = (len(axes[0]), len(axes[1]), len(axes[2]))
    image = np.full(shape, -1000.0, np.float32)
    body2d = ellipse <= 1.0
    image[np.broadcast_to(body2d, shape)] = hu["fat"]
    image[np.broadcast_to(ellipse <= 1.0 - fat / a, shape)] = hu["muscle"]
    # ribs: slanted bands in the outer 8 mm of the cavity, every 28-34 mm along z, open at the sternum
    period, height = rng.uniform(28, 34), rng.uniform(7, 10)
    band = (inner <= 1.0) & (inner >= 1.0 - 9.0 / (a - fat - wall)) & ~((np.abs(x) < 20) & (y > 0))
    phase = np.mod(z - 0.25 * y + rng.uniform(0, period), period) < height
    image[band & phase] = hu["bone"]
    # lungs: two tapered ellipsoids inside the cage, minus the mediastinum, heart and spine
    lung = np.zeros(shape, bool)
    cage = inner < 1.0 - 11.0 / (a - fat - wall)
    z_top = axes[2][-1] + rng.uniform(-20, 10)
    for side in (1.0, -1.0):
        cx, ax, ay = side * 0.45 * (a - fat - wall), 0.42 * (a - fat - wall), 0.8 * (b - fat - wall)
        taper = np.sqrt(np.clip(1.0 - ((z - (z_top - 90.0)) / 100.0) ** 2, 0.0, 1.0)) * (z < z_top)
        lung |= (((x - cx) / ax) ** 2 + ((y + 0.05 * b) / ay) ** 2 <= taper**2) & cage
    mediastinum = (np.abs(x + 0.05 * a) < 0.13 * a) & (y > -0.55 * b) & (inner < 1.0)
    heart = ((x + 0.15 * a) / (0.33 * a)) ** 2 + ((y - 0.2 * b) / (0.4 * b)) ** 2 + ((z + 60) / 70.0) ** 2 <= 1.0
    spine_y = -(b - fat - wall) + 28.0 * scale
    vertebra = np.sqrt(x**2 + (y - spine_y) ** 2) <= 17.0 * scale
    lung &= ~(mediastinum | heart | np.broadcast_to(vertebra, shape))
    image[np.broadcast_to(mediastinum | vertebra, shape) | heart] = hu["mediastinum"]
    image[np.broadcast_to(vertebra, shape)] = hu["bone"]
    image[np.broadcast_to(np.sqrt(x**2 + (y - spine_y) ** 2) <= 14.5 * scale, shape)] = hu["marrow"]
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0)
    texture *= 15.0 / max(float(texture.std()), 1e-6)
    image[lung] = hu["lung"] + texture[lung]
    # vessels: trees from each hilum, drawn in the lungs
    vessels = np.zeros(shape, bool)
    for side in (1.0, -1.0):
        hilum = np.array([side * 0.18 * a, 0.0, z_top - 90.0 + rng.uniform(-10, 10)])
        for start, end, radius in _vessel_tree(rng, hilum, side):
            box = []
            for k in range(3):
                low, high = min(start[k], end[k]) - radius - 1, max(start[k], end[k]) + radius + 1
                box.append(slice(int(np.searchsorted(axes[k], low)), int(np.searchsorted(axes[k], high, "right"))))
            if any(s.stop <= s.start for s in box):
                continue
            points = np.stack(np.meshgrid(*(axes[k][box[k]] for k in range(3)), indexing="ij"), axis=-1)
            vessels[tuple(box)] |= _segment_distance(points, start, end) <= radius
    vessels &= lung
    image[vessels] = hu["vessel"] + 0.3 * texture[vessels]
    # nodules: solid ellipsoids inside the lung, some against the pleura, apart from each other
    depth = ndimage.distance_transform_edt(lung, sampling=spacing_mm)
    label = np.zeros(shape, np.uint8)
    nodules: list[dict[str, Any]] = []
    occupied = np.zeros(shape, bool)
    wanted, shrink = int(rng.integers(NODULE_COUNT[0], NODULE_COUNT[1] + 1)), 1.0
    for _ in range(12 * wanted):  # a nodule that fits nowhere is drawn again, smaller
        if len(nodules) == wanted:
            break
        diameter = max(nodule_diameter[0], shrink * float(np.exp(rng.uniform(*np.log(nodule_diameter)))))
        radius = diameter / 2.0
        pleural = bool(rng.random() < pleural_share)
        free = ~ndimage.binary_dilation(occupied, _CUBE, iterations=2) if occupied.any() else np.ones(shape, bool)
        touching = (depth >= 0.5 * radius) & (depth <= radius + spacing_mm.max())
        within = touching if pleural else depth >= radius + 2.0
        candidates = np.argwhere(within & free & (depth > 0))
        if not len(candidates):
            shrink *= 0.8
            continue
        centre_index = candidates[rng.integers(len(candidates))]
        centre = np.array([axes[k][centre_index[k]] for k in range(3)])
        semi = radius * rng.uniform(0.85, 1.15, 3)
        reach = float(semi.max()) + 1.0
        box = tuple(
            slice(int(np.searchsorted(axes[k], centre[k] - reach)), int(np.searchsorted(axes[k], centre[k] + reach)))
            for k in range(3)
        )
        local = np.meshgrid(*((axes[k][box[k]] - centre[k]) / semi[k] for k in range(3)), indexing="ij")
        inside = (sum(c**2 for c in local) <= 1.0) & lung[box]
        region_free = ~ndimage.binary_dilation(occupied, _CUBE, iterations=2)[box]
        if not inside.any() or not (inside <= region_free).all():
            shrink *= 0.8
            continue
        nodule_hu = hu["nodule"] + rng.uniform(-10, 10)
        image[box][inside] = nodule_hu + 0.3 * texture[box][inside]
        label[box][inside] = NODULE
        occupied[box] |= inside
        nodules.append({"centre_mm": centre.tolist(), "semi_axes_mm": semi.tolist(), "pleural": pleural,
                        "hu": nodule_hu})  # fmt: skip
    sigma = [PSF_MM / s for s in spacing_mm]
    image = ndimage.gaussian_filter(image, sigma, output=np.float32, truncate=3.0)
    image += rng.uniform(10.0, 25.0) * rng.standard_normal(shape, dtype=np.float32)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    affine = np.diag([*spacing_mm, 1.0])
    affine[:3, 3] = [axis[0] for axis in axes]
    if lps:  # the first two voxel axes run to the patient's left and posterior, as DICOM stores them
        image, label, lung = (np.ascontiguousarray(v[::-1, ::-1]) for v in (image, label, lung))
        affine[:2, :2] *= -1
        affine[:2, 3] = [axes[0][-1], axes[1][-1]]
    return Phantom(image, label, affine, lung, nodules, "LPS" if lps else "RAS")


def generate_case(seed: int, size: int = 160, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case's (image int16 HU, label uint8, affine)."""
    phantom = build_phantom(seed, size, **kwargs)
    return phantom.image, phantom.label, phantom.affine


def measure(label: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """The nodules of a label map: their count and each one's world centroid, volume and diameter, largest first."""
    components, count = ndimage.label(np.asarray(label) == NODULE, structure=np.ones((3, 3, 3), bool))
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine)[:3, :3])))
    nodules = []
    if count:
        voxels = np.bincount(components.ravel(), minlength=count + 1)[1:]
        centres = ndimage.center_of_mass(components > 0, components, range(1, count + 1))
        for n, centre in zip(voxels, centres):
            volume = float(n) * voxel_mm3
            world = np.asarray(affine, float)[:3] @ np.append(centre, 1.0)
            nodules.append({
                "centre_mm": [round(float(c), 2) for c in world],
                "diameter_mm": round((6.0 * volume / np.pi) ** (1 / 3), 2),
                "volume_mm3": round(volume, 2),
            })  # fmt: skip
        nodules.sort(key=lambda n: -n["volume_mm3"])
    return {"nodule_count": int(count), "nodules": nodules}


def write_case(root: str | Path, split: str, name: str, seed: int, size: int = 160, **kwargs: Any) -> dict[str, Any]:
    """Write one case's image and label NIfTIs under ``root``; return its ``dataset.json`` entry with the truth."""
    image, label, affine = generate_case(seed, size, **kwargs)
    return {**save_pair(Path(root), split, name, image, label, affine), **measure(label, affine)}


def _cases(
    size: int,
    num_slices: int | None,
    spacing: Sequence[float] | None,
    nodule_diameter: Sequence[float],
    pleural_share: float,
) -> Any:
    """The writer of case ``lung_<index>``, every other one LPS-ordered."""
    options = {"num_slices": num_slices, "spacing": spacing, "pleural_share": pleural_share}
    return oriented_cases(write_case, "lung", size=size, nodule_diameter=tuple(nodule_diameter), **options)


def write_dataset(
    output_dir: str,
    num_train: int = 16,
    num_test: int = 4,
    seed: int = 0,
    size: int = 160,
    num_slices: int | None = None,
    spacing: Sequence[float] | None = None,
    nodule_diameter: Sequence[float] = NODULE_DIAMETER,
    pleural_share: float = PLEURAL_SHARE,
) -> str:
    """Write a Decathlon-style synthetic chest CT data set (every other case LPS-ordered); return the JSON's path."""
    cases = _cases(size, num_slices, spacing, nodule_diameter, pleural_share)
    return write_splits(output_dir, num_train, num_test, seed, cases, **DATASET)


def write_inputs(folder: str | Path, count: int, seed: int = 0, **options: Any) -> list[Path]:
    """Write ``count`` unlabelled CT NIfTIs ``lung_<i>.nii.gz`` into ``folder``, every other one LPS-ordered
    (``options``: ``size``, ``num_slices``, ``spacing``, ``nodule_diameter``, ``pleural_share``, as for
    ``build_phantom``)."""
    return write_images(folder, count, seed, oriented_cases(write_case, "lung", **options))
