"""Synthetic abdominal CT phantoms (NIfTI, Hounsfield units) with liver and liver-tumour labels, for tests and demos.

Each case is an axial CT stack of an upper abdomen built in patient coordinates (mm) and sampled on the scanner's
voxel grid. In-plane, the same on every slice: air (-1000 HU) around a rounded elliptical body (a superellipse,
270-340 mm wide), a subcutaneous fat layer (8-30 mm, -115..-85 HU), the abdominal muscle wall (7-13 mm, 40..60
HU), paraspinal and psoas muscles, the spine at the back (a vertebral body with a 2-3 mm cortical shell of
700..1000 HU around marrow of 180..300 HU, replaced every 30-36 mm by an intervertebral disc of 70..100 HU; the
neural arch and spinous process in cortical bone around the spinal canal, 5..25 HU), the contrast-enhanced aorta
(150..250 HU) in front of the spine on the patient's left and the inferior vena cava (100..150 HU) on the right.
Inside the muscle wall: bowel and mesentery (20..45 HU) mixed with visceral fat and a few gas pockets, drawn from
a smooth random field, and the bases of both lungs (-880..-820 HU) above two diaphragmatic domes at the top of the
stack. Organs are smooth implicit shapes: the kidneys (150..200 HU) beside the spine, lower than the liver's
centre; the spleen (100..120 HU) on the patient's LEFT against the posterolateral wall; and the liver on the
patient's RIGHT: the smooth union of a right lobe, a left lobe reaching across the midline in front and an
inferior segment, warped by a smooth random deformation (a few plane waves, 5-10 mm), kept clear of the spine and
aorta, clipped by the abdominal wall and carved by the IVC, about 0.7-2.3 L. The parenchyma (95..125 HU) holds a
tree of enhanced portal vessels (liver + 30..60 HU, radius 2-5.5 mm, labelled liver) and 0-4 hypodense tumours:
ellipsoids of 5-40 mm (largest axis, log-uniform), 30..70 HU darker than the liver with a soft (tanh) edge 1-2.5
mm wide and a darker centre when large. A tumour is placed with its whole extent at least two coarse cells and a
voxel inside the liver and away from the others (it shrinks when it fits nowhere), so each is one connected
component (26-connectivity) surrounded by liver. Every tissue has a smooth texture (liver about 4 HU); the image
is blurred by the CT point-spread function (sigma 0.6-1 mm in-plane and at least half a pixel; a slice profile
along the body axis), given Gaussian noise (sigma 10-20 HU), rounded, clipped to -1024..3071 and stored as int16.
Labels (uint8): 0 background, 1 liver parenchyma and its vessels (tumours excluded), 2 tumour.

Geometry: a square ``size`` x ``size`` matrix (default 160) over a 300-380 mm field of view (1.9-2.4 mm pixels at
the default size; a field of view narrower than the body shrinks the whole anatomy to fit), slices 2.5-5 mm apart
covering the liver plus 15-30 mm above and below (40-80 slices; the top slices show the lung bases). For the
memory and speed tests of inference, ``spacing`` and ``num_slices`` give any grid, e.g.
``generate_case(0, size=512, num_slices=300, spacing=(0.75, 0.75, 1.0))``: 512 x 512 x 300 in about 7 s on one
core with 1.7 GB peak memory (16 s with writing the files). World coordinates follow NIfTI (RAS+: x grows to the
patient's right, y anterior, z superior). Every other case of ``write_dataset`` (``orientation`` otherwise drawn
from the seed) stores an LPS-ordered voxel grid, as DICOM-to-NIfTI converters write it (the first two voxel axes
run to the patient's left and posterior, affine ``diag(-dx, -dy, dz)``), the others a RAS-ordered one
(``diag(dx, dy, dz)``): the arrays differ on disk, but the anatomy agrees in world coordinates, the liver always at
larger world x than the body's centre. The anatomy is random per case and deterministic per seed; the orientation
does not change it.

The anatomy is evaluated as smooth implicit fields on a coarse isotropic grid (3 mm), linearly interpolated to the
voxel grid (separably, within each structure's bounding box) and thresholded there, so that a 512 x 512 x 300
volume costs a few full-size passes. Layout written (one file per case, ``liver_XXX``)::

    imagesTr/liver_000.nii.gz   int16 HU      labelsTr/liver_000.nii.gz   uint8 0/1/2
    imagesTs/..., labelsTs/...  test cases, labelled
    dataset.json  {"training": [{"image", "label", "subject", "orientation", "liver_ml", "tumour_ml",
                   "tumour_count", "tumours": [{"volume_ml", "centre_mm", "diameter_mm"}, ...]}], "test": [...]}

The known truth in each entry is measured from the written label with the voxel volume of its affine (``measure``):
``liver_ml`` is label 1 (parenchyma without tumours; the whole organ is ``liver_ml + tumour_ml``); tumours are the
26-connected components of label 2, largest first, with their centroid in world (RAS+) mm and their
equivalent-sphere diameter ``(6 V / pi)^(1/3)``.

Command line::

    python -m synthetic liver --output_dir DIR --num_train 16 --num_test 4
    python -m synthetic liver --output_dir BIG --num_train 0 --num_test 1 \\
        --size 512 --num_slices 300 --spacing "[0.75,0.75,1.0]"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from common.metrics.clinical import label_volumes_ml, voxel_volume_ml
from synthetic.fields import oriented_cases, random_rotation, save_pair, smooth_noise, write_images, write_splits

#: our label indices and names (LiTS / MSD Task03)
LIVER, TUMOUR = 1, 2
LABELS = {"0": "background", "1": "liver", "2": "tumour"}
LIVER_CLASSES = {"liver": LIVER, "tumour": TUMOUR}
#: the phantom's tissues (index = tissue code in the tissue map)
TISSUES = (
    "air",
    "fat",
    "muscle",
    "viscera",
    "gas",
    "lung",
    "cortical_bone",
    "marrow",
    "disc",
    "canal",
    "aorta",
    "ivc",
    "kidney",
    "spleen",
    "liver",
    "hepatic_vessel",
    "tumour",
)
_T = {name: code for code, name in enumerate(TISSUES)}
#: the label of each tissue: the liver's vessels are liver, as in LiTS
TISSUE_LABELS = np.array(
    [LIVER if t in ("liver", "hepatic_vessel") else TUMOUR if t == "tumour" else 0 for t in TISSUES], np.uint8
)
#: range (HU) from which each case draws the mean of each tissue; vessels and tumours are relative to the liver
HU_RANGES = {
    "air": (-1000.0, -1000.0),
    "fat": (-115.0, -85.0),
    "muscle": (40.0, 60.0),
    "viscera": (20.0, 45.0),
    "gas": (-1000.0, -950.0),
    "lung": (-880.0, -820.0),
    "cortical_bone": (700.0, 1000.0),
    "marrow": (180.0, 300.0),
    "disc": (70.0, 100.0),
    "canal": (5.0, 25.0),
    "aorta": (150.0, 250.0),
    "ivc": (100.0, 150.0),
    "kidney": (150.0, 200.0),
    "spleen": (100.0, 120.0),
    "liver": (95.0, 125.0),
}
#: hepatic vessels: this much brighter than the liver (HU); tumours: this much darker, each its own
VESSEL_CONTRAST = (30.0, 60.0)
TUMOUR_CONTRAST = (30.0, 70.0)
#: tumour size: largest diameter (mm) and the most tumours per case
TUMOUR_DIAMETER = (5.0, 40.0)
MAX_TUMOURS = 4
#: probability of 0, 1, 2, 3 and 4 tumours in a case
TUMOUR_COUNT_P = (0.15, 0.3, 0.25, 0.15, 0.15)
#: standard deviation (HU) of each tissue's smooth texture
TEXTURE_HU = {
    "fat": 6.0,
    "muscle": 6.0,
    "viscera": 12.0,
    "lung": 15.0,
    "marrow": 25.0,
    "kidney": 6.0,
    "spleen": 4.0,
    "liver": 4.0,
    "hepatic_vessel": 4.0,
    "tumour": 6.0,
}
#: spacing (mm) of the coarse grid on which the anatomy's implicit fields are evaluated
COARSE_MM = 3.0
_NOISE_CHUNK = 16  # slices of noise drawn at a time (fixed, so that the noise is the same whatever the memory)
#: the index entries of the written ``dataset.json``
DATASET = {
    "name": "SyntheticLiverCT",
    "description": "Synthetic abdominal CT phantoms in HU with liver and liver-tumour labels "
    "(python -m synthetic liver).",
    "modality": {"0": "CT"},
    "labels": LABELS,
    "tensorImageSize": "3D",
}


@dataclass
class Anatomy:
    """One abdomen in anatomy coordinates (mm): u to the patient's right, v anterior, w superior.

    The body's axis is at u = v = 0 and the centre of the liver's lobes at w = 0. Ellipsoids are (centre (3),
    semi-axes (3), rotation about the body axis in radians).
    """

    body: tuple[float, float, float]  # half-width, half-depth, superellipse exponent
    fat: float  # subcutaneous fat thickness
    wall: float  # abdominal muscle wall thickness
    vertebra: tuple[float, float, float, float]  # centre v, half-width, half-depth, cortical shell thickness
    canal: tuple[float, float, float, float]  # centre v, radius, arch thickness, spinous process half-width
    disc: tuple[float, float, float]  # period, height, phase along w
    aorta: tuple[float, float, float]  # u, v, radius
    ivc: tuple[float, float, float, float]  # u, v, half-width, half-depth
    paraspinal: tuple[float, float, float, float]  # |u|, v, half-width, half-depth
    psoas: tuple[float, float, float, float]  # |u|, v, half-width, half-depth
    liver_lobes: tuple[tuple[np.ndarray, np.ndarray], ...]  # (centre, semi-axes) of each lobe
    liver_waves: np.ndarray  # (3, K, 6) displacement plane waves, see _waves
    spleen: tuple[np.ndarray, np.ndarray, float]
    spleen_waves: np.ndarray
    kidneys: tuple[tuple[np.ndarray, np.ndarray, float], ...]
    domes: tuple[tuple[float, float, float, float], ...]  # u, v, drop of the apex below the liver's top, radius


@dataclass
class Phantom:
    """One generated case: the image, its label and affine, and what it was made of."""

    image: np.ndarray  # int16 HU, (X, Y, Z)
    label: np.ndarray  # uint8 0/1/2, (X, Y, Z)
    affine: np.ndarray  # 4x4 voxel-to-world (RAS+, mm)
    tissue: np.ndarray  # uint8 tissue codes (indices into TISSUES), (X, Y, Z)
    hu: dict[str, float]  # mean HU of each tissue before texture, blur and noise (tumours: the liver's)
    tumours: list[dict[str, Any]]  # as placed: centre_mm (world), semi_axes_mm, contrast_hu
    orientation: str  # "RAS" or "LPS": the order of the voxel grid
    noise_hu: float  # standard deviation of the noise


def _waves(rng: np.random.Generator, count: int, amplitude: float) -> np.ndarray:
    """Plane waves of a smooth random displacement: (3 components, count, (direction 3, omega, phase, amplitude))."""
    directions = rng.standard_normal((3, count, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    omega = 2 * np.pi / rng.uniform(70.0, 150.0, (3, count, 1))
    phase = rng.uniform(0, 2 * np.pi, (3, count, 1))
    amp = amplitude * rng.uniform(0.5, 1.0, (3, count, 1)) / np.sqrt(count)
    return np.concatenate([directions, omega, phase, amp], axis=-1)


def _displace(waves: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """The points (u, v, w) moved by the smooth displacement field of ``waves``."""
    moved = []
    for coordinate, component in zip((u, v, w), waves):
        shift = 0.0
        for du, dv, dw, omega, phase, amp in component:
            shift = shift + amp * np.sin(omega * (du * u + dv * v + dw * w) + phase)
        moved.append(coordinate + shift)
    return tuple(moved)


def _ellipsoid(u: Any, v: Any, w: Any, centre: np.ndarray, semi: np.ndarray, angle: float = 0.0) -> np.ndarray:
    """Approximately signed distance (mm, negative inside) to an ellipsoid rotated by ``angle`` about the w axis."""
    du, dv, dw = u - centre[0], v - centre[1], w - centre[2]
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        du, dv = c * du + s * dv, -s * du + c * dv
    q = (du / semi[0]) ** 2 + (dv / semi[1]) ** 2 + (dw / semi[2]) ** 2
    return (np.sqrt(q) - 1.0) * float(np.mean(semi))


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """A smooth union of two implicit shapes (log-sum-exp minimum with blending distance ``k`` mm)."""
    m = np.minimum(a, b)
    return m - k * np.log(np.exp((m - a) / k) + np.exp((m - b) / k))


def _anatomy(rng: np.random.Generator) -> Anatomy:
    """A random abdomen."""
    half_width = rng.uniform(135.0, 170.0)
    half_depth = half_width * rng.uniform(0.68, 0.80)
    fat, wall = rng.uniform(8.0, 30.0), rng.uniform(7.0, 13.0)
    ai, bi = half_width - fat - wall, half_depth - fat - wall  # the abdominal cavity's half-axes
    vb_v, vb_a, vb_b = -half_depth + rng.uniform(72.0, 88.0), rng.uniform(19.0, 24.0), rng.uniform(15.0, 19.0)
    canal_r = rng.uniform(7.0, 9.0)
    canal_v = vb_v - vb_b - canal_r - 1.5
    k = rng.uniform(0.85, 1.12)  # liver size
    si = rng.uniform(70.0, 88.0) * k  # semi-axis of the right lobe along the body axis
    semi = np.array([rng.uniform(55.0, 68.0) * k, min(rng.uniform(60.0, 75.0) * k, 0.85 * bi), si])
    right = (np.array([max(ai - semi[0] - rng.uniform(0.0, 10.0), 0.2 * ai), rng.uniform(-0.1, 0.05) * bi, 0.0]), semi)
    left = (
        np.array([-rng.uniform(0.10, 0.22) * ai, rng.uniform(0.32, 0.42) * bi, rng.uniform(0.10, 0.30) * si]),
        np.array([rng.uniform(45.0, 60.0) * k, rng.uniform(25.0, 33.0) * k, rng.uniform(0.38, 0.50) * si]),
    )
    inferior = (
        right[0] + [rng.uniform(0.0, 20.0), rng.uniform(-15.0, 15.0), -rng.uniform(0.35, 0.60) * si],
        np.array([rng.uniform(28.0, 38.0) * k, rng.uniform(30.0, 40.0) * k, rng.uniform(0.35, 0.45) * si]),
    )
    spleen = (
        np.array([-0.62 * ai, -0.35 * bi, rng.uniform(0.10, 0.40) * si]),
        np.array([rng.uniform(18.0, 26.0), rng.uniform(40.0, 55.0), rng.uniform(40.0, 55.0)]),
        float(rng.uniform(np.pi / 6, np.pi / 3)),
    )
    kidney_w = -rng.uniform(0.55, 0.80) * si
    kidneys = tuple(
        (
            np.array([side * (vb_a + rng.uniform(35.0, 45.0)), vb_v + rng.uniform(-5.0, 10.0), w]),
            np.array([rng.uniform(22.0, 28.0), rng.uniform(20.0, 25.0), rng.uniform(45.0, 58.0)]),
            float(side * rng.uniform(np.pi / 18, np.pi / 6)),
        )
        for side, w in ((1.0, kidney_w), (-1.0, kidney_w + rng.uniform(10.0, 25.0)))
    )
    aorta_r = rng.uniform(9.0, 13.0)
    return Anatomy(
        body=(half_width, half_depth, rng.uniform(2.0, 2.6)),
        fat=fat,
        wall=wall,
        vertebra=(vb_v, vb_a, vb_b, rng.uniform(2.0, 3.0)),
        canal=(canal_v, canal_r, rng.uniform(4.0, 6.0), rng.uniform(3.0, 5.0)),
        disc=(rng.uniform(30.0, 36.0), rng.uniform(7.0, 10.0), rng.uniform(0.0, 30.0)),
        aorta=(-rng.uniform(10.0, 20.0), vb_v + vb_b + aorta_r + rng.uniform(2.0, 5.0), aorta_r),
        ivc=(
            rng.uniform(15.0, 25.0),
            vb_v + vb_b + rng.uniform(6.0, 16.0),
            rng.uniform(11.0, 15.0),
            rng.uniform(8, 11),
        ),
        paraspinal=(
            rng.uniform(28.0, 36.0),
            canal_v - rng.uniform(10.0, 18.0),
            rng.uniform(22, 30),
            rng.uniform(18, 26),
        ),
        psoas=(vb_a + rng.uniform(8.0, 14.0), vb_v + rng.uniform(-5.0, 5.0), rng.uniform(10, 16), rng.uniform(10, 16)),
        liver_lobes=(right, left, inferior),
        liver_waves=_waves(rng, 4, rng.uniform(5.0, 10.0)),
        spleen=spleen,
        spleen_waves=_waves(rng, 3, rng.uniform(3.0, 6.0)),
        kidneys=kidneys,
        domes=(
            (0.45 * ai, -0.10 * bi, rng.uniform(0.0, 10.0), rng.uniform(70.0, 100.0)),
            (-0.45 * ai, -0.10 * bi, rng.uniform(5.0, 25.0), rng.uniform(70.0, 100.0)),
        ),
    )


def _liver_field(an: Anatomy, u: Any, v: Any, w: Any) -> np.ndarray:
    """Implicit liver (mm, negative inside): the smooth union of the lobes, smoothly deformed."""
    moved = _displace(an.liver_waves, u, v, w)
    field = None
    for centre, semi in an.liver_lobes:
        lobe = _ellipsoid(*moved, centre, semi)
        field = lobe if field is None else _smooth_min(field, lobe, 12.0)
    # the liver stays clear of the spine, the aorta and the crura: an elliptic cylinder around them
    vb_v, vb_a, vb_b, _ = an.vertebra
    keep_out = (np.sqrt((u / (vb_a + 12.0)) ** 2 + ((v - vb_v) / (vb_b + 22.0)) ** 2) - 1.0) * (vb_a + 12.0)
    return np.maximum(field, -keep_out)


def _slice_layers(an: Anatomy, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue codes of the axial plane at in-plane anatomy coordinates (u, v), the same on every slice.

    Returns the base (air, fat, muscle wall, ``viscera`` for the abdominal cavity) and what lies on top of it
    (muscles, spine, aorta, IVC; 0 where nothing) at a vertebral level and at a disc level.
    """
    half_width, half_depth, p = an.body
    shape = np.broadcast_shapes(u.shape, v.shape)

    def inside(a: float, b: float) -> np.ndarray:
        return np.abs(u / a) ** p + np.abs(v / b) ** p <= 1.0

    base = np.zeros(shape, np.uint8)
    base[inside(half_width, half_depth)] = _T["fat"]
    under_fat = inside(half_width - an.fat, half_depth - an.fat)
    base[under_fat] = _T["muscle"]
    base[inside(half_width - an.fat - an.wall, half_depth - an.fat - an.wall)] = _T["viscera"]
    top = np.zeros(shape, np.uint8)
    for side in (-1.0, 1.0):
        pu, pv, pa, pb = an.paraspinal
        top[(((u - side * pu) / pa) ** 2 + ((v - pv) / pb) ** 2 <= 1.0) & under_fat] = _T["muscle"]
        su, sv, sa, sb = an.psoas
        top[((u - side * su) / sa) ** 2 + ((v - sv) / sb) ** 2 <= 1.0] = _T["muscle"]
    canal_v, canal_r, arch, spine_w = an.canal
    r_canal = np.sqrt(u**2 + (v - canal_v) ** 2)
    top[r_canal <= canal_r + arch] = _T["cortical_bone"]
    top[(np.abs(u) <= spine_w) & (v <= canal_v) & (v >= canal_v - canal_r - 22.0)] = _T["cortical_bone"]
    top[r_canal <= canal_r] = _T["canal"]
    vb_v, vb_a, vb_b, shell = an.vertebra
    body = ((u / vb_a) ** 2 + ((v - vb_v) / vb_b) ** 2) <= 1.0
    marrow = ((u / (vb_a - shell)) ** 2 + ((v - vb_v) / (vb_b - shell)) ** 2) <= 1.0
    au, av, ar = an.aorta
    iu, iv, ia, ib = an.ivc
    vessels = [(((u - iu) / ia) ** 2 + ((v - iv) / ib) ** 2 <= 1.0, _T["ivc"])]
    vessels.append(((u - au) ** 2 + (v - av) ** 2 <= ar**2, _T["aorta"]))
    levels = []
    for disc_level in (False, True):
        level = top.copy()
        level[body] = _T["disc"] if disc_level else _T["cortical_bone"]
        if not disc_level:
            level[marrow] = _T["marrow"]
        for mask, code in vessels:
            level[mask] = code
        level[base == _T["air"]] = 0
        levels.append(level)
    return base, levels[0], levels[1]


def _segment_distance(points: tuple[np.ndarray, ...], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (mm) from each point (broadcast coordinate arrays) to the segment from ``a`` to ``b``."""
    d = b - a
    rel = [p - a[i] for i, p in enumerate(points)]
    t = np.clip(sum(r * d[i] for i, r in enumerate(rel)) / float(d @ d), 0.0, 1.0)
    return np.sqrt(sum((r - t * d[i]) ** 2 for i, r in enumerate(rel)))


def _upsample(field: np.ndarray, coarse: Sequence[np.ndarray], coords: Sequence[np.ndarray]) -> np.ndarray:
    """Linear interpolation (float32) of a field on the regular grid ``coarse`` (3 axes) at the grid ``coords``."""
    out = field.astype(np.float32, copy=False)
    for axis in (2, 1, 0):  # separably, the short coarse axes last to keep the intermediates small
        axis_coords = coarse[axis]
        t = (coords[axis] - axis_coords[0]) / (axis_coords[1] - axis_coords[0])
        i0 = np.clip(np.floor(t).astype(np.intp), 0, len(axis_coords) - 2)
        shape = [1, 1, 1]
        shape[axis] = -1
        frac = np.clip(t - i0, 0.0, 1.0).astype(np.float32).reshape(shape)
        low, high = np.take(out, i0, axis=axis), np.take(out, i0 + 1, axis=axis)
        high -= low
        high *= frac
        low += high
        out = low
    return out


def _fine_box(mask: np.ndarray, coarse: Sequence[np.ndarray], fine: Sequence[np.ndarray]) -> tuple[slice, ...] | None:
    """The box of the fine grid (index slices) covering the coarse cells of ``mask`` and one cell around them."""
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        index = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        low = coarse[axis][max(index[0] - 1, 0)]
        high = coarse[axis][min(index[-1] + 1, len(coarse[axis]) - 1)]
        start, stop = np.searchsorted(fine[axis], low, "left"), np.searchsorted(fine[axis], high, "right")
        if stop <= start:
            return None
        box.append(slice(int(start), int(stop)))
    return tuple(box)


def _liver_box(an: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Corners (u, v, w in mm) of a box surely holding the deformed liver: its lobes' box plus 25 mm."""
    centres = np.array([c for c, _ in an.liver_lobes])
    semis = np.array([s for _, s in an.liver_lobes])
    return (centres - semis).min(axis=0) - 25.0, (centres + semis).max(axis=0) + 25.0


def _liver_extent(an: Anatomy) -> tuple[float, float]:
    """Lowest and highest w (mm) of the deformed liver, from a 3 mm grid around its lobes."""
    low, high = _liver_box(an)
    u, v, w = (np.arange(low[i], high[i], COARSE_MM) for i in range(3))
    inside = _liver_field(an, u[:, None, None], v[None, :, None], w[None, None, :]) <= 0
    levels = w[inside.any(axis=(0, 1))]
    return float(levels[0]), float(levels[-1])


def _boxed(
    function: Any, axes: Sequence[np.ndarray], low: np.ndarray, high: np.ndarray, outside: float = 1e3
) -> np.ndarray:
    """``function(u, v, w)`` (float32) on the grid of 1D ``axes``, evaluated only within [low, high], else outside."""
    field = np.full([len(a) for a in axes], outside, np.float32)
    box = []
    for axis, values in enumerate(axes):
        index = np.flatnonzero((values >= low[axis]) & (values <= high[axis]))
        if not len(index):
            return field
        box.append(slice(int(index[0]), int(index[-1]) + 1))
    grid = [axes[a][box[a]].reshape([-1 if i == a else 1 for i in range(3)]) for a in range(3)]
    field[tuple(box)] = function(*grid)
    return field


def _geometry_axes(
    rng: np.random.Generator,
    an: Anatomy,
    size: int,
    num_slices: int | None,
    spacing: Sequence[float] | None,
    liver_extent: tuple[float, float],
) -> tuple[list[np.ndarray], np.ndarray, float, tuple[float, float, float]]:
    """World coordinates of the voxel centres along each axis (RAS order), the body centre, the scale, the spacing.

    The slices cover ``liver_extent`` (the liver's lowest and highest w) plus margins.
    """
    fov = float(np.clip(2 * an.body[0] * rng.uniform(1.08, 1.25), 300.0, 380.0))
    slice_mm = rng.uniform(2.5, 5.0)
    margins = rng.uniform(15.0, 30.0, 2)
    fov_centre = rng.uniform(-30.0, 30.0, 2)
    body_shift = rng.uniform(-1.0, 1.0, 2)
    liver_z = rng.uniform(-300.0, 100.0)
    if spacing is None:
        pixel = (round(fov / size, 4),) * 2
    else:
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive voxel sizes in mm (x, y, slice), got {spacing}.")
        pixel, slice_mm = (float(spacing[0]), float(spacing[1])), float(spacing[2])
    extent = np.asarray(pixel) * size
    scale = float(min(1.0, 0.46 * extent[0] / an.body[0], 0.46 * extent[1] / an.body[1]))
    free = np.maximum(extent / 2 - np.asarray(an.body[:2]) * scale - 5.0, 0.0)
    centre = np.array([*(fov_centre + 0.5 * body_shift * free), liver_z])
    w_low, w_high = liver_extent
    z_low, z_high = liver_z + scale * (w_low - margins[0]), liver_z + scale * (w_high + margins[1])
    coverage = z_high - z_low
    if num_slices is None:
        count = int(np.ceil(coverage / slice_mm))
        if spacing is None and count > 80:
            count, slice_mm = 80, coverage / 80
        if spacing is None:
            count = max(count, 40)
    else:
        count = int(num_slices)
        if count < 1:
            raise ValueError(f"num_slices must be positive, got {num_slices}.")
        if spacing is None:
            slice_mm = coverage / count
    slice_mm = round(float(slice_mm), 4)
    axes = [fov_centre[i] + (np.arange(size) - (size - 1) / 2) * pixel[i] for i in range(2)]
    axes.append((z_low + z_high) / 2 + (np.arange(count) - (count - 1) / 2) * slice_mm)
    return axes, centre, scale, (pixel[0], pixel[1], slice_mm)


def _index_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    """Index slices of the bounding box of ``mask``, widened by ``pad`` within the array; None when empty."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        index = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(index[0]) - pad, 0), min(int(index[-1]) + pad + 1, mask.shape[axis])))
    return tuple(box)


def _place_tumours(
    rng: np.random.Generator, points: np.ndarray, depth: np.ndarray, fine: Sequence[np.ndarray]
) -> list[dict[str, Any]]:
    """0-4 tumours (centre on a voxel centre, semi-axes, rotation, contrast, edge) deep inside the liver.

    ``points`` (N, 3) are the world positions of the coarse liver cells and ``depth`` their distance (mm) from the
    liver's surface. A tumour that fits nowhere shrinks by 20 % steps, and is left out below 5 mm.
    """
    count = int(rng.choice(MAX_TUMOURS + 1, p=TUMOUR_COUNT_P))
    voxel = max(float(f[1] - f[0]) if len(f) > 1 else COARSE_MM for f in fine)
    tumours: list[dict[str, Any]] = []
    for _ in range(count):
        diameter = float(np.exp(rng.uniform(*np.log(TUMOUR_DIAMETER))))
        ratios = np.concatenate([[1.0], rng.uniform(0.75, 1.0, 2)])
        rotation = random_rotation(rng)
        contrast, edge, pick = rng.uniform(*TUMOUR_CONTRAST), rng.uniform(1.0, 2.5), rng.random()
        while diameter >= TUMOUR_DIAMETER[0]:
            radius = diameter / 2
            ok = depth >= radius + 2 * COARSE_MM + voxel + 1.0
            for other in tumours:
                gap = radius + max(other["semi_axes_mm"]) + 2 * voxel + 3.0
                ok &= np.linalg.norm(points - other["centre_mm"], axis=1) >= gap
            candidates = np.flatnonzero(ok)
            if len(candidates):
                point = points[candidates[int(pick * len(candidates))]]
                centre = np.array([f[int(np.argmin(np.abs(f - point[a])))] for a, f in enumerate(fine)])
                tumours.append({
                    "centre_mm": centre,
                    "semi_axes_mm": radius * ratios,
                    "rotation": rotation,
                    "contrast_hu": float(contrast),
                    "edge_mm": float(edge),
                })  # fmt: skip
                break
            diameter *= 0.8
    return tumours


def _vessel_field(
    rng: np.random.Generator, points: np.ndarray, depth: np.ndarray, grid: tuple[np.ndarray, ...]
) -> np.ndarray:
    """Implicit portal vessel tree (mm, negative inside) at the broadcast world coordinates ``grid``.

    3-4 trunks (radius 3.5-5.5 mm) run from a hilum near the liver's medial-inferior centre to liver points at
    least 8 mm deep, each with 2 branches (2-3.2 mm); ``points`` and ``depth`` as in ``_place_tumours``.
    """
    field = np.full(np.broadcast_shapes(*(g.shape for g in grid)), 1e3, np.float32)
    deep = points[depth >= 8.0]
    if len(deep) < 10:
        return field
    hilum = deep[np.argmin(np.linalg.norm(deep - (deep.mean(axis=0) + [-25.0, 0.0, -20.0]), axis=1))]
    segments = []
    for _ in range(int(rng.integers(3, 5))):
        far = deep[np.linalg.norm(deep - hilum, axis=1) > 50.0]
        if not len(far):
            break
        end = far[rng.integers(len(far))]
        segments.append((hilum, end, rng.uniform(3.5, 5.5)))
        for _ in range(2):
            start = hilum + rng.uniform(0.4, 0.8) * (end - hilum)
            far = deep[np.linalg.norm(deep - start, axis=1) > 30.0]
            if len(far):
                segments.append((start, far[rng.integers(len(far))], rng.uniform(2.0, 3.2)))
    for start, end, radius in segments:
        np.minimum(field, _segment_distance(grid, start, end) - radius, out=field)
    return field


def build_phantom(
    seed: int,
    size: int = 160,
    num_slices: int | None = None,
    spacing: Sequence[float] | None = None,
    orientation: str | None = None,
) -> Phantom:
    """One random abdominal CT case with its tissue map; ``orientation`` "RAS", "LPS" or None (drawn from the seed)."""
    rng = np.random.default_rng(seed)
    lps = bool(rng.random() < 0.5)
    if orientation is not None:
        if str(orientation).upper() not in ("RAS", "LPS"):
            raise ValueError(f"orientation must be 'RAS' or 'LPS', got {orientation!r}.")
        lps = str(orientation).upper() == "LPS"
    size = int(size)
    an = _anatomy(rng)
    hu = {name: float(rng.uniform(*bounds)) for name, bounds in HU_RANGES.items()}
    hu["hepatic_vessel"] = hu["liver"] + float(rng.uniform(*VESSEL_CONTRAST))
    hu["tumour"] = hu["liver"]  # each tumour's own contrast is subtracted with its soft edge
    psf_mm, noise_hu = rng.uniform(0.6, 1.0), float(rng.uniform(10.0, 20.0))
    w_low, w_top = _liver_extent(an)
    fine, centre, scale, spacing_mm = _geometry_axes(rng, an, size, num_slices, spacing, (w_low, w_top))
    # the coarse grid around the volume and the anatomy's fields on it
    coarse = [np.arange(f[0] - 2 * COARSE_MM, f[-1] + 2.5 * COARSE_MM, COARSE_MM) for f in fine]
    u, v, w = ((coarse[a] - centre[a]) / scale for a in range(3))
    shape = tuple(len(c) for c in coarse)
    axes = (u, v, w)
    liver = _boxed(lambda *p: _liver_field(an, *p), axes, *_liver_box(an))
    spleen_reach = float(max(an.spleen[1])) + 20.0
    spleen = _boxed(
        lambda *p: _ellipsoid(*_displace(an.spleen_waves, *p), *an.spleen),
        axes,
        an.spleen[0] - spleen_reach,
        an.spleen[0] + spleen_reach,
    )
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]
    kidneys = np.minimum(*(_ellipsoid(u, v, w, *kidney) for kidney in an.kidneys)).astype(np.float32)
    lungs = np.full(shape, np.inf, np.float32)
    for du, dv, drop, radius in an.domes:
        surface = w_top - drop - ((u - du) ** 2 + (v - dv) ** 2) / (2 * radius)
        np.minimum(lungs, np.maximum(surface - w, 25.0 - np.sign(du) * u), out=lungs)  # each on its own side
    viscera = smooth_noise(rng, shape, 8.0 / COARSE_MM, np.float32)
    texture = smooth_noise(rng, shape, 1.0, np.float32)
    # the liver as painted (inside the cavity, without the spine and the great vessels), for vessels and tumours
    base_c, top_c, _ = _slice_layers(an, u[:, :, 0], v[:, :, 0])
    free_c = ((base_c == _T["viscera"]) & (top_c == 0))[:, :, None]
    liver_c = (liver <= 0) & free_c
    vessels = np.full(shape, 1e3, np.float32)
    tumours: list[dict[str, Any]] = []
    liver_box = _index_box(liver_c, pad=2)
    if liver_box is not None:
        sub = np.pad(liver_c[liver_box], 1)
        depth = ndimage.distance_transform_edt(sub, sampling=COARSE_MM)[1:-1, 1:-1, 1:-1]
        index = np.nonzero(depth > 0)
        points = np.stack([coarse[a][liver_box[a]][index[a]] for a in range(3)], axis=1)
        grid = tuple(coarse[a][liver_box[a]].reshape([-1 if i == a else 1 for i in range(3)]) for a in range(3))
        vessels[liver_box] = _vessel_field(rng, points, depth[index], grid)
        tumours = _place_tumours(rng, points, depth[index], fine)
    # the voxel grid: in-plane layers, then the organs in order of priority, then the spine and great vessels
    u_f, v_f = ((fine[a] - centre[a]) / scale for a in range(2))
    base, top_vertebra, top_disc = _slice_layers(an, u_f[:, None], v_f[None, :])
    cavity = base == _T["viscera"]
    tissue = np.repeat(base[:, :, None], len(fine[2]), axis=2)
    box = _index_box(cavity[:, :, None])
    if box is not None:  # bowel, visceral fat and gas in the abdominal cavity
        box = (box[0], box[1], slice(None))
        field = _upsample(viscera, coarse, [fine[a][box[a]] for a in range(3)])
        region, inside = tissue[box], cavity[box[:2]][:, :, None]
        region[inside & (field > 0.5)] = _T["fat"]
        region[inside & (field < -2.3)] = _T["gas"]
    for code, field in ((_T["lung"], lungs), (_T["kidney"], kidneys), (_T["spleen"], spleen), (_T["liver"], liver)):
        box = _fine_box(field <= 2 * COARSE_MM, coarse, fine)
        if box is not None:
            region = tissue[box]
            inside = _upsample(field, coarse, [fine[a][box[a]] for a in range(3)]) <= 0
            region[inside & cavity[box[:2]][..., None]] = code
    box = _fine_box(vessels <= 2 * COARSE_MM, coarse, fine)
    if box is not None:
        region = tissue[box]
        inside = _upsample(vessels, coarse, [fine[a][box[a]] for a in range(3)]) <= 0
        region[inside & (region == _T["liver"])] = _T["hepatic_vessel"]
    shading = []  # (box, weight, contrast) of each tumour, applied to the image below
    for tumour in tumours:
        reach = max(tumour["semi_axes_mm"]) + 3 * tumour["edge_mm"] + COARSE_MM
        box = tuple(
            slice(
                int(np.searchsorted(fine[a], tumour["centre_mm"][a] - reach)),
                int(np.searchsorted(fine[a], tumour["centre_mm"][a] + reach, "right")),
            )
            for a in range(3)
        )
        local = [
            (fine[a][box[a]] - tumour["centre_mm"][a]).reshape([-1 if i == a else 1 for i in range(3)])
            for a in range(3)
        ]
        rotated = [sum(tumour["rotation"][a, b] * local[a] for a in range(3)) for b in range(3)]
        rho = np.sqrt(sum((rotated[b] / tumour["semi_axes_mm"][b]) ** 2 for b in range(3)))
        region = tissue[box]
        region[(rho <= 1.0) & ((region == _T["liver"]) | (region == _T["hepatic_vessel"]))] = _T["tumour"]
        weight = 0.5 * (1.0 - np.tanh((rho - 1.0) * float(np.mean(tumour["semi_axes_mm"])) / tumour["edge_mm"]))
        if max(tumour["semi_axes_mm"]) > 12.5:  # a darker, necrotic-looking centre in large tumours
            weight = weight + 0.3 * np.clip(1.0 - rho / 0.6, 0.0, 1.0)
        shading.append((box, weight.astype(np.float32), tumour["contrast_hu"]))
    disc_period, disc_height, disc_phase = an.disc
    w_f = (fine[2] - centre[2]) / scale
    at_disc = np.mod(w_f - disc_phase, disc_period) < disc_height
    for k in range(len(fine[2])):
        top = top_disc if at_disc[k] else top_vertebra
        np.copyto(tissue[:, :, k], top, where=top > 0)
    # the image: tissue means, texture, tumour contrast, point-spread function, noise
    image = np.array([hu[t] for t in TISSUES], np.float32)[tissue]
    field = _upsample(texture, coarse, fine)
    field *= np.array([TEXTURE_HU.get(t, 0.0) for t in TISSUES], np.float32)[tissue]
    image += field
    del field
    liverish = np.isin(np.arange(len(TISSUES)), [_T["liver"], _T["hepatic_vessel"], _T["tumour"]])
    for box, weight, contrast in shading:
        image[box] -= contrast * weight * liverish[tissue[box]]
    sigma = [max(0.5, psf_mm / spacing_mm[0]), max(0.5, psf_mm / spacing_mm[1]), max(0.4, 0.8 / spacing_mm[2])]
    image = ndimage.gaussian_filter(image, sigma, output=np.float32, truncate=3.0)
    for k in range(0, image.shape[2], _NOISE_CHUNK):
        chunk = image[:, :, k : k + _NOISE_CHUNK]
        chunk += noise_hu * rng.standard_normal(chunk.shape, dtype=np.float32)
    np.rint(image, out=image)
    np.clip(image, -1024, 3071, out=image)
    image = image.astype(np.int16)
    label = TISSUE_LABELS[tissue]
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing_mm)
    affine[:3, 3] = [f[0] for f in fine]
    if lps:  # the first two voxel axes run to the patient's left and posterior, as DICOM stores them
        image, label, tissue = (np.ascontiguousarray(a[::-1, ::-1]) for a in (image, label, tissue))
        affine[:2, :2] *= -1
        affine[:2, 3] = [fine[0][-1], fine[1][-1]]
    placed = [
        {
            "centre_mm": t["centre_mm"].tolist(),
            "semi_axes_mm": t["semi_axes_mm"].tolist(),
            "contrast_hu": t["contrast_hu"],
        }
        for t in tumours
    ]
    return Phantom(image, label, affine, tissue, hu, placed, "LPS" if lps else "RAS", noise_hu)


def generate_case(
    seed: int,
    size: int = 160,
    num_slices: int | None = None,
    spacing: Sequence[float] | None = None,
    orientation: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case's (image int16 HU, label uint8, affine), volumes of shape (size, size, slices)."""
    phantom = build_phantom(seed, size, num_slices, spacing, orientation)
    return phantom.image, phantom.label, phantom.affine


def measure(label: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Liver and tumour volumes (mL), tumour count and each tumour's volume, world centroid (mm) and diameter."""
    label = np.asarray(label)
    volumes = label_volumes_ml(label, voxel_volume_ml(affine), LIVER_CLASSES)
    box = _index_box(label == TUMOUR)
    tumours = []
    count = 0
    if box is not None:  # the connected components, within the tumours' bounding box
        components, count = ndimage.label(label[box] == TUMOUR, structure=np.ones((3, 3, 3), bool))
        voxels = np.bincount(components.ravel(), minlength=count + 1)[1:]
        centres = ndimage.center_of_mass(components > 0, components, range(1, count + 1))
        offset = np.array([b.start for b in box], float)
        for n, centre in zip(voxels, centres):
            volume_mm3 = n * voxel_volume_ml(affine) * 1000.0
            world = np.asarray(affine, float)[:3] @ np.append(np.asarray(centre) + offset, 1.0)
            tumours.append({
                "volume_ml": round(float(volume_mm3) / 1000.0, 4),
                "centre_mm": [round(float(c), 2) for c in world],
                "diameter_mm": round(float((6 * volume_mm3 / np.pi) ** (1 / 3)), 2),
            })  # fmt: skip
        tumours.sort(key=lambda t: -t["volume_ml"])
    return {
        "liver_ml": round(volumes["liver"], 3),
        "tumour_ml": round(volumes["tumour"], 4),
        "tumour_count": count,
        "tumours": tumours,
    }


def write_case(
    root: str | Path,
    split: str,
    name: str,
    seed: int,
    size: int = 160,
    num_slices: int | None = None,
    spacing: Sequence[float] | None = None,
    orientation: str | None = None,
) -> dict[str, Any]:
    """Write one case's image and label NIfTIs under ``root``; return its ``dataset.json`` entry with the truth."""
    image, label, affine = generate_case(seed, size, num_slices, spacing, orientation)
    return {**save_pair(Path(root), split, name, image, label, affine), **measure(label, affine)}


def write_dataset(
    output_dir: str,
    num_train: int = 16,
    num_test: int = 4,
    seed: int = 0,
    size: int = 160,
    num_slices: int | None = None,
    spacing: Sequence[float] | None = None,
) -> str:
    """Write a Decathlon-style synthetic liver CT data set (every other case LPS-ordered); return the JSON's path."""
    cases = oriented_cases(write_case, "liver", size=size, num_slices=num_slices, spacing=spacing)
    return write_splits(output_dir, num_train, num_test, seed, cases, **DATASET)


def write_inputs(folder: str | Path, count: int, seed: int = 0, **options: Any) -> list[Path]:
    """Write ``count`` unlabelled CT NIfTIs ``liver_<i>.nii.gz`` into ``folder``, every other one LPS-ordered
    (``options``: ``size``, ``num_slices``, ``spacing``, as for ``write_case``)."""
    return write_images(folder, count, seed, oriented_cases(write_case, "liver", **options))
