"""Synthetic multimodal brain MR phantoms (one NIfTI per modality, or one 4D file, per subject) for tests and demos.

Each subject is a miniature head (about half adult size, so that volumes stay small for CPU tests; the layer
thicknesses are real millimetres) built from an ellipsoid, from the outside in: air, scalp (skin and fat, bright in
T1), the skull (dark cortical bone around bright marrow), an outer CSF layer (label 1) under the skull, then the
brain. The cortex is a folded grey-matter ribbon (label 2) 2-4 mm thick over the white matter (label 3): the white
matter's surface dips below the brain's outer envelope along the zero lines of a smooth random field on the sphere
of directions (a sum of plane waves ``cos(w d.u + phi)`` in the direction ``u``, i.e. a band-limited combination of
spherical harmonics), and along the midsagittal plane (the interhemispheric fissure). Every brain voxel within the
cortical thickness of the white matter is grey matter; what is left between the banks of a sulcus is CSF. Near the
centre: two lateral ventricles (CSF, crescent-shaped ellipsoids on either side of a thin septum, diverging
posteriorly) and two deep grey-matter nuclei (label 2) in their lateral concavities. Labels: 0 background (air,
scalp, skull), 1 CSF, 2 grey matter, 3 white matter. Axes: voxel axis 0 runs left-right, 1 posterior-anterior, 2
inferior-superior; slices are axial, along the third voxel axis, as in MRBrainS.

Each modality maps the tissues to relative intensities (``CONTRASTS``, approximately realistic): T1 WM > GM > CSF
with bright fat; T2 CSF > GM > WM; FLAIR CSF suppressed, GM slightly above WM; T1_IR (inversion recovery) strong
WM/GM contrast with very dark CSF; PD. Names are matched case-insensitively (``T1w``, ``T2w``, ``IR``, ``T2_FLAIR``
are aliases); any other name gets a random contrast fixed by the name (seeded by its CRC32, the same in every
subject and every run, with CSF, GM and WM at least 0.1 apart). Every modality then gets a smooth texture, a
partial-volume blur (Gaussian, sigma 0.5 voxel), its own smooth multiplicative bias field, Rician noise and its own
random gain, and is stored as float32. Pixels are 0.9-1.2 mm, slices 1-3 mm apart (thinner, down to 1 mm, where
the slab would exceed 1.1 head heights), 96-128 pixels across (``size`` overrides: a square ``size`` x ``size``
grid; a tiny head keeps a cortex at least 1.5 pixels thick) and 24-40 slices; an oblique affine (random rotation,
sometimes a flipped axis) is shared by all modalities and the label. Everything is deterministic per seed; the
anatomy does not depend on which modalities are written, and each modality's bias, noise and gain depend only on the
seed and its name.

Layout written (nnU-Net channel convention, channel ``XXXX`` in the order of ``modalities``)::

    imagesTr/subject000_0000.nii.gz, imagesTr/subject000_0001.nii.gz, ...   one file per modality
    labelsTr/subject000.nii.gz                                               uint8 label
    imagesTs/..., labelsTs/...                                               test subjects, labelled
    dataset.json   {"modality": {"0": "T1", ...}, "training": [{"image": [...], "label": ..., "subject": ...}]}

With ``four_d=True`` each subject's modalities go to one 4D file ``imagesTr/subject000.nii.gz`` of shape
(X, Y, Z, modalities) and ``image`` is that single path.

Command line::

    python -m synthetic brain --output_dir DIR --num_train 12 --num_test 3
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from common.data import save_nifti
from synthetic.fields import numbered_cases, random_affine, smooth_noise, write_images, write_splits

#: our label indices
CSF, GM, WM = 1, 2, 3
LABELS = {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}
#: the phantom's tissues (index = tissue code in the tissue map) and the label each one gets
TISSUES = ("air", "scalp", "skull", "marrow", "csf", "gm", "wm", "deep_gm")
TISSUE_LABELS = np.array([0, 0, 0, 0, CSF, GM, WM, GM], np.uint8)
#: relative intensity of each tissue in each known modality (deep grey matter: between GM and WM, computed)
CONTRASTS = {
    "T1": {"air": 0.0, "scalp": 0.95, "skull": 0.06, "marrow": 0.75, "csf": 0.12, "gm": 0.46, "wm": 0.72},
    "T2": {"air": 0.0, "scalp": 0.55, "skull": 0.05, "marrow": 0.45, "csf": 1.00, "gm": 0.58, "wm": 0.42},
    "FLAIR": {"air": 0.0, "scalp": 0.65, "skull": 0.05, "marrow": 0.50, "csf": 0.08, "gm": 0.60, "wm": 0.47},
    "T1_IR": {"air": 0.0, "scalp": 0.80, "skull": 0.04, "marrow": 0.60, "csf": 0.03, "gm": 0.32, "wm": 0.88},
    "PD": {"air": 0.0, "scalp": 0.80, "skull": 0.05, "marrow": 0.65, "csf": 0.85, "gm": 0.78, "wm": 0.62},
}
#: other spellings of the known modalities (upper case)
ALIASES = {"T1W": "T1", "T2W": "T2", "IR": "T1_IR", "T1IR": "T1_IR", "T2_FLAIR": "FLAIR", "PDW": "PD"}
MODALITIES = ("T1", "T2", "FLAIR")
#: the index entries of the written ``dataset.json``
DATASET = {
    "name": "SyntheticBrainTissue",
    "description": "Synthetic multimodal brain MR phantoms with CSF, grey and white matter "
    "(python -m synthetic brain).",
    "labels": LABELS,
}


@dataclass
class Head:
    """Geometry of one subject's head, in mm, centred at the origin (x left-right, y posterior-anterior, z up)."""

    axes: tuple[float, float, float]  # semi-axes of the head (scalp surface) ellipsoid
    scalp: float  # thickness of the scalp
    skull: float  # thickness of the skull
    csf: float  # thickness of the outer CSF layer
    cortex: float  # thickness of the cortical ribbon
    sulcus_depth: float  # how far the white matter dips below the brain surface along a sulcus
    sulcus_width: float  # half-width of the white matter's dip along a sulcus
    fissure_depth: float  # depth of the interhemispheric fissure
    waves: np.ndarray  # (K, 5): direction (3), angular frequency, phase of the folding field's plane waves
    ventricle: tuple[float, ...]  # x0, y0, z0, half-width, half-length, half-height, curvature, divergence (rad)
    nucleus: tuple[float, ...]  # half-width, half-length, half-height, y offset of the deep grey-matter nuclei


def _head(rng: np.random.Generator, extent: tuple[float, float], spacing: float) -> Head:
    """A random head filling most of an in-plane field of view of ``extent`` (mm, left-right and front-back)."""
    b = min(rng.uniform(0.40, 0.44) * extent[1], 0.50 * extent[0] / 0.92)
    a = min(b * rng.uniform(0.80, 0.90), 0.44 * extent[0])
    c = b * rng.uniform(0.85, 0.95)
    k = min(1.0, b / 36.0)  # thin layers keep their real thickness unless the head is tiny
    scalp, skull, csf = rng.uniform(3.0, 5.0) * k, rng.uniform(3.0, 5.0) * k, rng.uniform(1.0, 2.5) * k
    cortex = max(rng.uniform(2.0, 4.0) * k, 1.5 * spacing)  # at least a pixel and a half, even in a tiny head
    brain = b - scalp - skull - csf  # front-back semi-axis of the brain
    n_waves = 12
    directions = rng.standard_normal((n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frequencies = rng.uniform(5.0, 7.5, n_waves) * max(brain / 30.0, 0.5)
    waves = np.column_stack([directions, frequencies, rng.uniform(0, 2 * np.pi, n_waves)])
    size = rng.uniform(0.8, 1.4)  # ventricular enlargement varies between subjects
    ventricle = (
        rng.uniform(1.0, 1.5) * k + 0.07 * brain * size,  # x0: centre of one ventricle, off the midline
        rng.uniform(-0.05, 0.05) * brain,  # y0
        rng.uniform(0.05, 0.15) * c,  # z0: a little above the centre of the head
        0.07 * brain * size,  # half-width
        rng.uniform(0.33, 0.40) * brain,  # half-length
        0.20 * brain * size,  # half-height
        rng.uniform(0.6, 1.0) / brain,  # curvature of the crescent
        rng.uniform(0.10, 0.25),  # divergence: the posterior ends lie further from the midline
    )
    nucleus = (0.09 * brain, rng.uniform(0.14, 0.18) * brain, 0.13 * brain, rng.uniform(-0.05, 0.10) * brain)
    return Head(
        axes=(a, b, c),
        scalp=scalp,
        skull=skull,
        csf=csf,
        cortex=cortex,
        sulcus_depth=rng.uniform(0.22, 0.32) * brain,
        sulcus_width=cortex + rng.uniform(0.6, 1.4) * k,
        fissure_depth=rng.uniform(0.30, 0.38) * brain,
        waves=waves,
        ventricle=ventricle,
        nucleus=nucleus,
    )


def _folding(head: Head, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The folding field f and its angular gradient's norm |grad f| (per radian) at unit directions ``u`` (3, ...)."""
    f = np.zeros(u.shape[1:])
    grad = np.zeros(u.shape)
    for dx, dy, dz, w, phi in head.waves:
        du = dx * u[0] + dy * u[1] + dz * u[2]
        f += np.cos(w * du + phi)
        slope = -w * np.sin(w * du + phi)
        for i, d in enumerate((dx, dy, dz)):
            grad[i] += slope * (d - du * u[i])  # the tangential part of the gradient of d.u
    return f, np.sqrt((grad**2).sum(axis=0))


def _tissue_map(head: Head, x: np.ndarray, y: np.ndarray, z: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Tissue codes (indices into ``TISSUES``) at the voxel centres x, y, z (mm, head centre at the origin)."""
    a, b, c = head.axes
    r = np.sqrt(x**2 + y**2 + z**2) + 1e-6
    u = np.stack([x / r, y / r, z / r])
    surface = 1.0 / np.sqrt((u[0] / a) ** 2 + (u[1] / b) ** 2 + (u[2] / c) ** 2)  # head radius along u
    depth = surface - r  # radial depth below the scalp surface (mm)
    tissue = np.zeros(x.shape, np.uint8)
    tissue[depth >= 0] = TISSUES.index("scalp")
    bone = head.scalp
    tissue[depth >= bone] = TISSUES.index("skull")
    tissue[(depth >= bone + head.skull / 3) & (depth < bone + 2 * head.skull / 3)] = TISSUES.index("marrow")
    brain = bone + head.skull + head.csf  # depth of the brain's outer envelope
    tissue[depth >= bone + head.skull] = TISSUES.index("csf")
    # white matter: below the cortex, dipping along the sulci (zero lines of the folding field) and the fissure
    f, slope = _folding(head, u)
    distance = r * np.abs(f) / (slope + 1e-6)  # approximate distance (mm) from the nearest sulcus line
    sulcus = np.clip(1.0 - (distance / head.sulcus_width) ** 2, 0.0, None)
    # the fissure opens from the top, front and back of the brain, not from below (where the brain stem lies)
    fissure = np.exp(-((np.abs(x) / head.sulcus_width) ** 4)) * np.clip((u[2] + 0.3) / 0.4, 0.0, 1.0)
    wm_depth = brain + head.cortex + head.sulcus_depth * sulcus + head.fissure_depth * fissure
    white = depth >= wm_depth
    from_white = ndimage.distance_transform_edt(~white, sampling=spacing)
    tissue[(depth >= brain) & (from_white <= head.cortex) & (np.abs(x) > 0.5 * spacing[0])] = TISSUES.index("gm")
    tissue[white] = TISSUES.index("wm")
    # deep structures, inside the white matter
    x0, y0, z0, vx, vy, vz, curvature, divergence = head.ventricle
    nx, ny, nz, ny0 = head.nucleus
    inside = depth >= brain + head.cortex
    for side in (-1.0, 1.0):
        lateral = side * x
        along = y - y0
        bend = x0 + curvature * along**2 - divergence * along  # the centre line: crescent, diverging posteriorly
        horn = ((lateral - bend) / vx) ** 2 + (along / vy) ** 2 + ((z - z0) / vz) ** 2 <= 1.0
        cx = x0 + vx + 0.6 * nx + 1.0
        nucleus = ((lateral - cx) / nx) ** 2 + ((y - y0 - ny0) / ny) ** 2 + ((z - z0 + 0.3 * vz) / nz) ** 2 <= 1.0
        tissue[inside & nucleus] = TISSUES.index("deep_gm")
        tissue[inside & horn & (lateral > 0)] = TISSUES.index("csf")
    return tissue


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth multiplicative bias field: exp of a random quadratic polynomial over the volume (about +-25 %)."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    log_field = np.zeros(shape)
    terms = list(grids) + [grids[i] * grids[j] for i in range(3) for j in range(i, 3)]
    for term, coefficient in zip(terms, rng.normal(0.0, 0.08, len(terms))):
        log_field += coefficient * term
    return np.exp(log_field)


def contrast(modality: str) -> dict[str, float]:
    """Relative intensity of each tissue in ``modality``: a known one, or a random contrast fixed by the name."""
    name = ALIASES.get(modality.upper(), modality.upper())
    if name in CONTRASTS:
        values = dict(CONTRASTS[name])
    else:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        while True:
            values = {tissue: float(rng.uniform(0.05, 1.0)) for tissue in TISSUES if tissue != "deep_gm"}
            brain = sorted(values[t] for t in ("csf", "gm", "wm"))
            if min(np.diff(brain)) >= 0.1:
                break
        values["air"] = 0.0
    values["deep_gm"] = values["gm"] + 0.3 * (values["wm"] - values["gm"])
    return values


def _render(tissue: np.ndarray, modality: str, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MR-like intensities (float32) of a tissue map in one modality: texture, blur, bias, Rician noise, gain."""
    values = contrast(modality)
    lookup = np.array([values[t] for t in TISSUES])
    image = lookup[tissue] * (1.0 + 0.04 * texture)
    image = ndimage.gaussian_filter(image, 0.5)  # partial volume / point-spread function, 0.5 voxel
    image = image * _bias_field(rng, tissue.shape)
    sigma = rng.uniform(0.01, 0.03)  # Rician noise: magnitude of a complex signal with Gaussian noise
    noise = sigma * rng.standard_normal((2,) + tissue.shape)
    image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)
    gain = rng.uniform(100.0, 2000.0)
    return (image * gain).astype(np.float32)


def generate_subject(
    seed: int, size: int | None = None, modalities: Sequence[str] = MODALITIES
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """One subject's (images float32 per modality, label uint8, affine), volumes of shape (X, Y, slices)."""
    rng = np.random.default_rng(seed)
    spacing = float(rng.uniform(0.9, 1.2))
    thickness = float(rng.uniform(1.0, 3.0))
    n_slices = int(rng.integers(24, 41))
    if size:
        shape = (int(size), int(size), n_slices)
    else:
        side = 2 * int(rng.integers(48, 61))  # 96-120 pixels left-right
        shape = (side, min(128, side + 2 * int(rng.integers(0, 5))), n_slices)
    head = _head(rng, (shape[0] * spacing, shape[1] * spacing), spacing)
    thickness = max(1.0, min(thickness, 2.2 * head.axes[2] / n_slices))  # the slab spans at most 1.1 head heights
    # voxel centres (mm) relative to the head centre: the head near the centre of the field of view, the slab of
    # slices centred near the ventricles
    shift = rng.uniform(-0.03, 0.03, 2) * np.asarray(shape[:2]) * spacing
    z_centre = head.ventricle[2] + rng.uniform(-0.1, 0.1) * head.axes[2]
    x = (np.arange(shape[0]) - shape[0] / 2 + 0.5)[:, None, None] * spacing + shift[0]
    y = (np.arange(shape[1]) - shape[1] / 2 + 0.5)[None, :, None] * spacing + shift[1]
    z = (np.arange(shape[2]) - shape[2] / 2 + 0.5)[None, None, :] * thickness + z_centre
    x, y, z = np.broadcast_arrays(x, y, z)
    voxel = (spacing, spacing, thickness)
    tissue = _tissue_map(head, x, y, z, voxel)
    affine = random_affine(voxel, shape, rng)
    texture = smooth_noise(rng, shape, (2.0, 2.0, 2.0 / thickness))
    images = []
    for modality in modalities:
        modality_rng = np.random.default_rng([seed, zlib.crc32(str(modality).encode())])
        images.append(_render(tissue, str(modality), texture, modality_rng))
    return images, TISSUE_LABELS[tissue], affine


def write_subject(
    root: Path,
    split: str,
    subject: str,
    seed: int,
    size: int | None = None,
    modalities: Sequence[str] = MODALITIES,
    four_d: bool = False,
) -> dict:
    """Write a subject's modality NIfTIs (or one 4D NIfTI) and label NIfTI; return its ``dataset.json`` entry."""
    images, label, affine = generate_subject(seed, size, modalities)
    if four_d:
        image: str | list[str] = f"images{split}/{subject}.nii.gz"
        save_nifti(np.stack(images, axis=-1), affine, root / image)
    else:
        image = [f"images{split}/{subject}_{channel:04d}.nii.gz" for channel in range(len(images))]
        for relative, data in zip(image, images):
            save_nifti(data, affine, root / relative)
    label_path = f"labels{split}/{subject}.nii.gz"
    save_nifti(label, affine, root / label_path)
    return {"image": image, "label": label_path, "subject": subject}


def write_dataset(
    output_dir: str,
    num_train: int = 12,
    num_test: int = 3,
    seed: int = 0,
    size: int | None = None,
    modalities: Sequence[str] = MODALITIES,
    four_d: bool = False,
) -> str:
    """Write a Decathlon-style synthetic multimodal brain MR data set; return the path of its ``dataset.json``."""
    modalities = [modalities] if isinstance(modalities, str) else [str(m) for m in modalities]
    cases = numbered_cases(write_subject, "subject", size=size, modalities=modalities, four_d=four_d)
    return write_splits(
        output_dir,
        num_train,
        num_test,
        seed,
        cases,
        **DATASET,
        modality={str(i): name for i, name in enumerate(modalities)},
        tensorImageSize="4D" if four_d else "3D",
    )


def write_inputs(
    folder: str | Path,
    count: int,
    seed: int = 0,
    size: int | None = None,
    num_slices: int | None = None,
    modalities: Sequence[str] = MODALITIES,
) -> list[Path]:
    """Write ``count`` unlabelled subjects into ``folder`` as modality files ``subject<i>_000c.nii.gz``; with
    ``num_slices``, each stack linearly interpolated to that many slices (the affine's slice axis scaled to match)."""
    modalities = [modalities] if isinstance(modalities, str) else [str(m) for m in modalities]

    def one(root: Path, split: str, index: int, case_seed: int) -> dict[str, list[str]]:
        images, _, affine = generate_subject(case_seed, size, modalities)
        if num_slices:
            factor = num_slices / images[0].shape[2]
            images = [ndimage.zoom(im, (1, 1, factor), order=1).astype(np.float32) for im in images]
            affine = affine.copy()
            affine[:3, 2] /= factor
        relatives = [f"imagesTs/subject{index:03d}_{channel:04d}.nii.gz" for channel in range(len(images))]
        for relative, image in zip(relatives, images):
            save_nifti(image, affine, root / relative)
        return {"image": relatives}

    return write_images(folder, count, seed, one)
