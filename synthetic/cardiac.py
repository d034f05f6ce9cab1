"""Synthetic cine short-axis MR phantoms (ED and ES frames per subject, NIfTI) for tests, demos and benchmarks.

Each subject has a left ventricle (LV) modelled as nested half-ellipsoids: the cavity (label 3) inside the
epicardium, the myocardium (label 2) between them, both tapering from the base (first slice) to the apex. The right
ventricle (RV) cavity (label 1) is a crescent: a flatter half-ellipsoid beside the LV, on a random side, minus the
LV, with a thin unlabelled free wall. Around the heart: a body ellipse with subcutaneous fat, two dark lung fields,
the descending aorta (bright, unlabelled) and smooth tissue texture. At end-systole the cavities shrink by the
subject's ejection fractions (LV 25-70 %, RV 30-65 %) and the myocardium thickens at constant volume. The image
is blurred like an MR point-spread function, multiplied by a smooth bias field, given Rician noise and stored as
int16 with a random gain. Stacks have 1.3-1.8 mm pixels, 7-10 mm between slices, and an oblique affine (random
rotation, sometimes a flipped axis) shared by image and label; slices run along the third voxel axis, as in ACDC.
Every ``dataset.json`` entry carries ``subject``, ``phase`` and the label volumes in mL.

Command line::

    python -m synthetic cardiac --output_dir DIR --num_train 16 --num_test 4
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from common.data import save_nifti
from common.metrics.clinical import ACDC_CLASSES, label_volumes_ml, voxel_volume_ml
from synthetic.fields import numbered_cases, random_affine, smooth_noise, write_images, write_splits

#: ACDC label indices
RV, MYO, LV = 1, 2, 3
PHASES = ("ED", "ES")
#: the index entries of the written ``dataset.json``
DATASET = {
    "name": "SyntheticCardiacSAX",
    "description": "Synthetic cine short-axis MR phantoms, ED and ES per subject (python -m synthetic cardiac).",
    "modality": {"0": "MRI"},
    "labels": {"0": "background", "1": "RV cavity", "2": "LV myocardium", "3": "LV cavity"},
}


@dataclass
class Heart:
    """Geometry of one subject's heart at one phase, in mm (heart centre at the origin of the slice plane)."""

    lv_cavity: tuple[float, float]  # (radius, long-axis length) of the LV cavity half-ellipsoid
    lv_epicardium: tuple[float, float]  # (radius, length) of the epicardial half-ellipsoid
    rv: tuple[float, float, float]  # (radius across, radius along the septum, length) of the RV half-ellipsoid
    rv_angle: float  # direction of the RV from the LV centre (radians, in-plane)
    rv_offset: float  # distance of the RV centre from the LV centre (mm)


def _hearts(rng: np.random.Generator) -> dict[str, Heart]:
    """ED and ES geometry of one random subject, with random ejection fractions and constant myocardial volume."""
    r_cav, l_cav = rng.uniform(21, 29), rng.uniform(65, 85)
    wall = rng.uniform(7, 11)
    r_epi, l_epi = r_cav + wall, l_cav + wall
    myo_volume = r_epi**2 * l_epi - r_cav**2 * l_cav  # in units of (2/3) pi mm^3
    lv_ef, rv_ef = rng.uniform(0.25, 0.70), rng.uniform(0.30, 0.65)
    rv_ed = (rng.uniform(0.75, 0.95) * r_epi, rng.uniform(1.2, 1.5) * r_epi, rng.uniform(0.7, 0.85) * l_epi)
    angle = rng.uniform(0, 2 * np.pi)
    ed = Heart((r_cav, l_cav), (r_epi, l_epi), rv_ed, angle, 0.6 * r_epi + 0.5 * rv_ed[0])
    # systole: 10 % long-axis shortening, radial shrinkage for the rest of the ejection fraction
    l_cav_es = 0.9 * l_cav
    r_cav_es = r_cav * np.sqrt((1 - lv_ef) / 0.9)
    l_epi_es = 0.93 * l_epi
    r_epi_es = np.sqrt((myo_volume + r_cav_es**2 * l_cav_es) / l_epi_es)
    k_rv = np.sqrt((1 - rv_ef) / 0.9)
    rv_es = (rv_ed[0] * k_rv, rv_ed[1] * k_rv, rv_ed[2] * 0.9)
    es = Heart((r_cav_es, l_cav_es), (r_epi_es, l_epi_es), rv_es, angle, 0.6 * r_epi_es + 0.5 * rv_es[0])
    return {"ED": ed, "ES": es}


def _half_ellipsoid_radius(radius: float, length: float, depth: np.ndarray) -> np.ndarray:
    """In-plane radius of a half-ellipsoid (base at depth 0, apex at ``length``) at each depth; 0 beyond it."""
    return radius * np.sqrt(np.clip(1.0 - (depth / length) ** 2, 0.0, None))


def _label_stack(heart: Heart, x: np.ndarray, y: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """Label map (X, Y, slices) of the heart sampled at in-plane coordinates x, y (mm) and slice depths (mm)."""
    labels = np.zeros(x.shape + (len(depths),), np.uint8)
    r2 = x**2 + y**2
    c, s = np.cos(heart.rv_angle), np.sin(heart.rv_angle)
    u = (x - heart.rv_offset * c) * c + (y - heart.rv_offset * s) * s  # across the RV, away from the septum
    v = -(x - heart.rv_offset * c) * s + (y - heart.rv_offset * s) * c  # along the septum
    for k, depth in enumerate(depths):
        epi = _half_ellipsoid_radius(*heart.lv_epicardium, depth)
        cav = _half_ellipsoid_radius(*heart.lv_cavity, depth)
        across = _half_ellipsoid_radius(heart.rv[0], heart.rv[2], depth)
        along = _half_ellipsoid_radius(heart.rv[1], heart.rv[2], depth)
        plane = np.zeros(x.shape, np.uint8)
        if across > 0:
            plane[(u / across) ** 2 + (v / along) ** 2 <= 1.0] = RV
        plane[r2 <= epi**2] = MYO
        plane[r2 <= cav**2] = LV
        labels[..., k] = plane
    return labels


def _render(
    labels: np.ndarray, heart: Heart, x: np.ndarray, y: np.ndarray, spacing: float, rng: np.random.Generator
) -> np.ndarray:
    """MR-like intensities (float, about 0..1) of a label stack with its surroundings, blur, bias and Rician noise."""
    shape = labels.shape
    body_a, body_b = rng.uniform(130, 165), rng.uniform(95, 120)  # chest half-width and half-depth (mm)
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = 30 * np.cos(angle), 30 * np.sin(angle)  # the heart lies off the centre of the chest
    body_r = ((x + cx) / body_a) ** 2 + ((y + cy) / body_b) ** 2
    tissue = 0.42 + 0.06 * smooth_noise(rng, x.shape, 4.0 / spacing)
    image = np.where(body_r <= 1.0, tissue, 0.0)
    image = np.where((body_r <= 1.0) & (body_r > 0.80), 0.85, image)  # subcutaneous fat
    for side in (-1, 1):  # lungs, lateral to the heart
        lung = ((x + cx - side * 0.45 * body_a) / (0.32 * body_a)) ** 2 + ((y + cy) / (0.7 * body_b)) ** 2 <= 1.0
        image = np.where(lung, 0.06, image)
    aorta_x, aorta_y = -cx + rng.uniform(-0.1, 0.1) * body_a, -cy + 0.55 * body_b
    aorta = (x - aorta_x) ** 2 + (y - aorta_y) ** 2 <= rng.uniform(9, 13) ** 2
    image = np.where(aorta, 0.9, image)
    image = np.repeat(image[..., None], shape[-1], axis=-1)
    # the heart: pericardial fat rim, RV free wall, myocardium dark, blood bright
    heart_zone = ndimage.binary_dilation(labels > 0, iterations=max(1, round(3.0 / spacing)), axes=(0, 1))
    image[heart_zone] = 0.40
    image[labels == MYO] = rng.uniform(0.22, 0.32)
    blood = rng.uniform(0.80, 0.95)
    image[(labels == LV) | (labels == RV)] = blood
    image += 0.02 * rng.standard_normal(shape) * (labels > 0)  # trabeculation-like variation in the heart
    image = ndimage.gaussian_filter(image, (0.6, 0.6, 0))  # point-spread function, in-plane only
    bias = np.exp(0.25 * smooth_noise(rng, shape[:2], 30.0 / spacing))[..., None]
    image = image * bias
    sigma = rng.uniform(0.02, 0.05)  # Rician noise: magnitude of a complex signal with Gaussian noise
    return np.sqrt((image + sigma * rng.standard_normal(shape)) ** 2 + (sigma * rng.standard_normal(shape)) ** 2)


def generate_subject(seed: int, size: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One subject's ``{"ED": (image int16, label uint8, affine), "ES": ...}``, stacks of shape (X, Y, slices)."""
    rng = np.random.default_rng(seed)
    spacing = float(rng.uniform(1.3, 1.8))
    thickness = float(rng.uniform(7.0, 10.0))
    hearts = _hearts(rng)
    n_slices = int(np.ceil(hearts["ED"].lv_epicardium[1] / thickness)) + int(rng.integers(0, 2))
    depths = rng.uniform(0.1, 0.5) * thickness + thickness * np.arange(n_slices)
    side = size or int(rng.uniform(190, 250) / spacing) // 2 * 2  # a 190-250 mm field of view
    width = side + 2 * int(rng.integers(-6, 7))
    # in-plane coordinates (mm), the heart near but not at the centre of the field of view
    shift = rng.uniform(-0.08, 0.08, 2) * side * spacing
    x = (np.arange(side) - side / 2 + 0.5)[:, None] * spacing + shift[0]
    y = (np.arange(width) - width / 2 + 0.5)[None, :] * spacing + shift[1]
    x, y = np.broadcast_arrays(x, y)
    affine = random_affine((spacing, spacing, thickness), (side, width, n_slices), rng)
    gain = rng.uniform(200, 1500)
    out = {}
    for phase in PHASES:
        labels = _label_stack(hearts[phase], x, y, depths)
        image = _render(labels, hearts[phase], x, y, spacing, rng)
        out[phase] = (np.clip(image * gain, 0, 32767).astype(np.int16), labels, affine)
    return out


def write_subject(root: Path, split: str, subject: str, seed: int, size: int | None = None) -> list[dict]:
    """Write a subject's ED and ES image and label NIfTIs; return their ``dataset.json`` entries."""
    entries = []
    for phase, (image, labels, affine) in generate_subject(seed, size).items():
        entry = {"subject": subject, "phase": phase}
        for key, data in (("image", image), ("label", labels)):
            relative = f"{key}s{split}/{subject}_{phase}.nii.gz"
            save_nifti(data, affine, root / relative)
            entry[key] = relative
        volumes = label_volumes_ml(labels, voxel_volume_ml(affine), ACDC_CLASSES)
        entry.update({f"{name}_ml": round(v, 3) for name, v in volumes.items()})
        entries.append(entry)
    return entries


def write_dataset(
    output_dir: str, num_train: int = 16, num_test: int = 4, seed: int = 0, size: int | None = None
) -> str:
    """Write a Decathlon-style synthetic short-axis data set (ED and ES per subject); return the JSON's path."""
    cases = numbered_cases(write_subject, "subject", size=size)
    return write_splits(output_dir, num_train, num_test, seed, cases, **DATASET)


def write_inputs(folder: str | Path, count: int, seed: int = 0, size: int | None = None) -> list[Path]:
    """Write ``count`` unlabelled subjects into ``folder``, one NIfTI stack per phase (``subject<i>_ED.nii.gz``...)."""
    return write_images(folder, count, seed, numbered_cases(write_subject, "subject", size=size))
