"""A small synthetic colour-fundus data set (photographs, vessel labels, FOV masks) for tests, demos and benchmarks.

Each photograph has a circular field of view (FOV) on black, an orange-red background that darkens towards the rim,
a bright yellowish optic disc off-centre on the horizontal axis, a darker macula, and branching vessel trees that
grow from the optic disc: arcades curving above and below the macula and shorter nasal vessels, branching
recursively and tapering from about 6 px at the disc to under 2 px at the tips (for a 320 px image). Vessels are
drawn as anti-aliased thick polylines, darker mostly in green; the label is exactly the region drawn at half
coverage or more, inside the FOV. Everything is deterministic given the seed.

Command line::

    python -m synthetic retinal --output_dir DIR --num_train 20 --num_test 5 --size 320
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from synthetic.fields import numbered_cases, write_images, write_splits

#: image side the vessel widths and step lengths below are given for
REFERENCE_SIZE = 320.0
#: darkening of a vessel per channel (R, G, B) relative to its green contrast
CHANNEL_WEIGHTS = np.array([0.35, 1.0, 0.6], np.float32)
#: most segments drawn per photograph, a guard against runaway branching
MAX_SEGMENTS = 6000
#: the index entries of the written ``dataset.json``
DATASET = {
    "name": "SyntheticFundus",
    "description": "Synthetic colour fundus photographs with vessel labels and FOV masks "
    "(python -m synthetic retinal).",
    "modality": {"0": "R", "1": "G", "2": "B"},
    "labels": {"0": "background", "1": "vessel"},
}


@dataclass
class _Segments:
    """Straight vessel pieces: end points (y, x), widths at both ends and the green contrast of each piece."""

    starts: list[tuple[float, float]] = field(default_factory=list)
    ends: list[tuple[float, float]] = field(default_factory=list)
    widths: list[tuple[float, float]] = field(default_factory=list)
    contrasts: list[float] = field(default_factory=list)

    def add(self, start: np.ndarray, end: np.ndarray, w0: float, w1: float, contrast: float) -> None:
        """Append one piece from ``start`` to ``end`` whose width goes from ``w0`` to ``w1``."""
        self.starts.append((float(start[0]), float(start[1])))
        self.ends.append((float(end[0]), float(end[1])))
        self.widths.append((w0, w1))
        self.contrasts.append(contrast)


@dataclass
class _Eye:
    """Layout of one photograph: FOV centre and radius, optic disc, fovea, the semi-axes (y, x) of the ellipse
    around the fovea that the temporal arcades follow, which side the disc is on and the scale to 320 px."""

    centre: np.ndarray
    radius: float
    disc: np.ndarray
    disc_radius: float
    fovea: np.ndarray
    arcade: np.ndarray
    side: int
    scale: float


def _layout(height: int, width: int, rng: np.random.Generator) -> _Eye:
    """Draw the FOV disc, the optic disc position (left or right of centre) and the fovea."""
    centre = np.array([(height - 1) / 2, (width - 1) / 2]) + rng.uniform(-0.01, 0.01, 2) * min(height, width)
    radius = 0.5 * rng.uniform(0.9, 0.95) * min(height, width)
    side = int(rng.choice([-1, 1]))
    disc = centre + radius * np.array([rng.uniform(-0.08, 0.04), side * rng.uniform(0.48, 0.62)])
    fovea = centre + radius * np.array([rng.uniform(0.0, 0.06), -side * rng.uniform(0.0, 0.1)])
    arcade = np.array([radius * rng.uniform(0.38, 0.5), abs(disc[1] - fovea[1])])
    scale = min(height, width) / REFERENCE_SIZE
    return _Eye(centre, radius, disc, radius * rng.uniform(0.12, 0.15), fovea, arcade, side, scale)


def _orbit_heading(eye: _Eye, point: np.ndarray, sense: float) -> float:
    """Heading that follows the arcade ellipse around the fovea (``sense`` +-1 picks the way round), pulled back
    onto the ellipse when the vessel has drifted off it; past the fovea it heads on temporally."""
    u, v = (point[1] - eye.fovea[1]) / eye.arcade[1], (point[0] - eye.fovea[0]) / eye.arcade[0]
    phi, rho = np.arctan2(v, u), np.hypot(u, v)
    if u * eye.side < 0:  # past the fovea: run on temporally, fanning out a little, instead of closing the loop
        return float(np.arctan2(0.3 * np.sign(v), -eye.side))
    tangent = sense * np.array([eye.arcade[0] * np.cos(phi), -eye.arcade[1] * np.sin(phi)])
    outward = np.array([eye.arcade[0] * np.sin(phi), eye.arcade[1] * np.cos(phi)])
    dy, dx = tangent / np.linalg.norm(tangent) + 1.5 * (1.0 - rho) * outward / np.linalg.norm(outward)
    return float(np.arctan2(dy, dx))


def _grow_branch(
    eye: _Eye,
    segments: _Segments,
    rng: np.random.Generator,
    start: np.ndarray,
    angle: float,
    width: float,
    contrast: float,
    curvature: float,
    depth: int,
    orbit: float = 0.0,
) -> None:
    """Grow one vessel from ``start`` heading ``angle`` (radians, y down), spawning side branches recursively.

    The vessel tapers as it goes, gives off thinner children at random intervals (its own width shrinking by
    Murray's law), and stops at the tip width, near the FOV rim or at the fovea's avascular zone. It bends by
    ``curvature`` (radians per pixel, decaying) or, when ``orbit`` is +-1, steers along the arcade ellipse.
    """
    step = 3.0 * eye.scale
    tip = max(rng.uniform(1.5, 2.0) * eye.scale, 1.0)
    taper = rng.uniform(0.006, 0.012)
    next_branch = rng.uniform(10.0, 30.0) * eye.scale
    travelled = 0.0
    point = np.asarray(start, float)
    while width > tip and len(segments.contrasts) < MAX_SEGMENTS:
        if orbit:
            angle += 0.3 * np.angle(np.exp(1j * (_orbit_heading(eye, point, orbit) - angle)))
        angle += curvature * step + rng.normal(0.0, 0.09)
        curvature *= 0.98
        end = point + step * np.array([np.sin(angle), np.cos(angle)])
        new_width = max(width - taper * step, tip)
        segments.add(point, end, width, new_width, contrast * (0.8 + 0.2 * min(width / (6 * eye.scale), 1.0)))
        point, width, travelled = end, new_width, travelled + step
        if np.hypot(*(point - eye.centre)) > 0.97 * eye.radius:
            return
        if np.hypot(*(point - eye.fovea)) < 0.09 * eye.radius:
            return
        if travelled >= next_branch and depth < 7 and width > 1.4 * tip:
            child = width * rng.uniform(0.45, 0.75)
            width = max((width**3 - child**3) ** (1 / 3), 0.9 * child, tip)
            turn = rng.choice([-1.0, 1.0]) * np.deg2rad(rng.uniform(30, 75))
            child_contrast = float(np.clip(contrast * rng.uniform(0.9, 1.05), 0.26, 0.44))
            bend = rng.normal(0.0, 0.004)
            _grow_branch(eye, segments, rng, point, angle + turn, child, child_contrast, bend, depth + 1)
            next_branch = travelled + rng.uniform(12.0, 36.0) * eye.scale


def _vessel_trees(eye: _Eye, rng: np.random.Generator) -> _Segments:
    """Grow an artery and a vein for each of the four arcades from the optic disc, plus a few small twigs.

    Angles are headings in radians with y pointing down, so ``up = -1`` is the superior and ``up = 1`` the
    inferior half; the temporal arcades leave the disc steeply and bend around the macula, the nasal ones are
    thinner and head away from it.
    """
    segments = _Segments()
    temporal = np.pi if eye.side > 0 else 0.0  # heading from the disc towards the macula
    for up in (-1, 1):
        for vein in (False, True):
            width = max((rng.uniform(5.6, 7.0) if vein else rng.uniform(4.6, 5.6)) * eye.scale, 2.5)
            contrast = rng.uniform(0.36, 0.44) if vein else rng.uniform(0.3, 0.38)
            start = eye.disc + eye.disc_radius * rng.uniform(-0.25, 0.25, 2)
            heading = up * (np.pi / 2 + eye.side * np.deg2rad(rng.uniform(10, 35)))
            _grow_branch(eye, segments, rng, start, heading, width, contrast, 0.0, 0, orbit=up * eye.side)
            heading = up * (np.pi / 2 - eye.side * np.deg2rad(rng.uniform(30, 60)))
            _grow_branch(eye, segments, rng, start, heading, 0.7 * width, 0.9 * contrast, 0.0, 1)
    for _ in range(int(rng.integers(2, 5))):
        heading = rng.choice([temporal, temporal + np.pi]) + rng.normal(0.0, 0.35)
        width = max(rng.uniform(2.4, 3.4) * eye.scale, 1.8)
        _grow_branch(eye, segments, rng, eye.disc.copy(), heading, width, rng.uniform(0.3, 0.38), 0.0, 3)
    return segments


def _render_vessels(shape: tuple[int, int], segments: _Segments) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise the pieces: (coverage 0..1 of the most-covering piece, green darkening 0..1) per pixel.

    Each piece is a capsule whose width is interpolated along it; a pixel's coverage is ``half width - distance +
    0.5`` clipped to [0, 1], so the edge is anti-aliased and coverage >= 0.5 is exactly ``distance <= half width``.
    """
    coverage = np.zeros(shape, np.float32)
    darkening = np.zeros(shape, np.float32)
    for a, b, (w0, w1), contrast in zip(segments.starts, segments.ends, segments.widths, segments.contrasts):
        reach = max(w0, w1) / 2 + 1.0
        y0, y1 = max(int(min(a[0], b[0]) - reach), 0), min(int(max(a[0], b[0]) + reach) + 2, shape[0])
        x0, x1 = max(int(min(a[1], b[1]) - reach), 0), min(int(max(a[1], b[1]) + reach) + 2, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        dy, dx = b[0] - a[0], b[1] - a[1]
        t = np.clip(((yy - a[0]) * dy + (xx - a[1]) * dx) / max(dy * dy + dx * dx, 1e-9), 0.0, 1.0)
        distance = np.hypot(yy - a[0] - t * dy, xx - a[1] - t * dx)
        half = (w0 + t * (w1 - w0)) / 2
        cover = np.clip(half - distance + 0.5, 0.0, 1.0).astype(np.float32)
        # a vessel is a cylinder: slightly darker along its centre line than at its edges
        profile = 0.85 + 0.15 * np.sqrt(np.clip(1.0 - (distance / np.maximum(half, 1e-6)) ** 2, 0.0, 1.0))
        np.maximum(coverage[y0:y1, x0:x1], cover, out=coverage[y0:y1, x0:x1])
        np.maximum(darkening[y0:y1, x0:x1], cover * profile * contrast, out=darkening[y0:y1, x0:x1])
    return coverage, darkening


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cells: int = 12) -> np.ndarray:
    """Low-frequency noise of unit-ish amplitude: a coarse random grid upsampled with cubic splines."""
    coarse = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
    return ndimage.zoom(coarse, (shape[0] / cells, shape[1] / cells), order=3, grid_mode=True, mode="nearest")[
        : shape[0], : shape[1]
    ]


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Open float32 pixel coordinates: a column of row indices and a row of column indices."""
    return np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :]


def _retina(height: int, width: int, eye: _Eye, rng: np.random.Generator) -> np.ndarray:
    """Orange-red retina (HxWx3 float) with illumination fall-off towards the rim, choroidal mottling and macula."""
    yy, xx = _grid(height, width)
    rho = np.hypot(yy - eye.centre[0], xx - eye.centre[1]) / eye.radius
    colour = np.array([rng.uniform(175, 215), rng.uniform(80, 105), rng.uniform(28, 48)], np.float32)
    illumination = 1.0 - rng.uniform(0.25, 0.4) * np.clip(rho, 0, 1) ** rng.uniform(2.0, 3.0)
    gradient = 1.0 + rng.uniform(-0.08, 0.08) * (yy - eye.centre[0]) / eye.radius
    mottling = 1.0 + 0.04 * _smooth_noise((height, width), rng)
    fovea_distance = np.hypot(yy - eye.fovea[0], xx - eye.fovea[1])
    macula = 1.0 - rng.uniform(0.12, 0.25) * np.exp(-0.5 * (fovea_distance / (0.14 * eye.radius)) ** 2)
    return colour * (illumination * gradient * mottling * macula)[..., None]


def _optic_disc(height: int, width: int, eye: _Eye) -> np.ndarray:
    """Yellowish brightness (HxWx3 float) the optic disc and its brighter cup add to the retina."""
    yy, xx = _grid(height, width)
    distance = np.hypot(yy - eye.disc[0], xx - eye.disc[1])
    edge = max(0.8 * eye.scale, 0.5)
    disc = 1.0 / (1.0 + np.exp(np.clip((distance - eye.disc_radius) / edge, -30, 30)))
    cup = np.exp(-0.5 * (distance / (0.45 * eye.disc_radius)) ** 2)
    return (0.75 * disc + 0.35 * cup)[..., None] * np.array([55.0, 110.0, 60.0], np.float32)


def generate_fundus(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthesise one fundus photograph: (RGB uint8 HxWx3, vessel label bool HxW, FOV mask bool HxW)."""
    rng = np.random.default_rng(seed)
    eye = _layout(height, width, rng)
    yy, xx = _grid(height, width)
    fov = np.hypot(yy - eye.centre[0], xx - eye.centre[1]) <= eye.radius

    retina = _retina(height, width, eye, rng)
    coverage, darkening = _render_vessels((height, width), _vessel_trees(eye, rng))
    # vessels lie in front of the disc: they darken the retina and hide the disc's glow where they cover it
    image = retina * (1.0 - darkening[..., None] * CHANNEL_WEIGHTS)
    image += _optic_disc(height, width, eye) * (1.0 - 0.9 * coverage[..., None])
    blur = rng.uniform(0.3, 0.55) * max(eye.scale, 0.5)
    image = ndimage.gaussian_filter(image, sigma=(blur, blur, 0))
    image += rng.uniform(3.0, 6.0) * rng.standard_normal(image.shape, dtype=np.float32)
    image[~fov] = 0.0
    vessels = (coverage >= 0.5) & fov
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), vessels, fov


def write_image(path: str, height: int, width: int, seed: int = 0) -> str:
    """Write one synthetic fundus photograph of any size to ``path`` (format from the extension) and return it."""
    image, _, _ = generate_fundus(height, width, seed)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return str(path)


def _case_size(size: int, seed: int) -> tuple[int, int]:
    """Height and width of one case: ``size`` with each side varied by up to 10%, seeded."""
    rng = np.random.default_rng([seed, 7])
    return tuple(int(round(size * f)) for f in rng.uniform(0.9, 1.1, 2))  # type: ignore[return-value]


def _write_case(root: Path, split: str, name: str, seed: int, size: int) -> dict[str, str]:
    """Write image, label and mask PNGs of one case into the ``split`` folders; return its data-list entry."""
    image, vessels, fov = generate_fundus(*_case_size(size, seed), seed)
    entry = {}
    for key, array in (("image", image), ("label", vessels), ("mask", fov)):
        entry[key] = f"{key}s{split}/{name}.png"
        (root / entry[key]).parent.mkdir(parents=True, exist_ok=True)
        pixels = array if array.dtype == np.uint8 else array.astype(np.uint8) * 255  # RGB photograph, "L" masks
        Image.fromarray(pixels).save(root / entry[key])
    return entry


def write_dataset(output_dir: str, num_train: int = 20, num_test: int = 5, seed: int = 0, size: int = 320) -> str:
    """Write a Decathlon-style synthetic fundus data set (PNGs and ``dataset.json``); return the JSON's path."""
    cases = numbered_cases(_write_case, "fundus_", size=size)
    return write_splits(output_dir, num_train, num_test, seed, cases, **DATASET)


def write_inputs(folder: str | Path, count: int, seed: int = 0, size: int = 320) -> list[Path]:
    """Write ``count`` unlabelled ``size`` x ``size`` fundus photographs ``fundus_<i>.png`` into ``folder``."""

    def one(root: Path, split: str, index: int, case_seed: int) -> dict[str, str]:
        relative = f"imagesTs/fundus_{index:03d}.png"
        write_image(str(root / relative), size, size, seed=case_seed)
        return {"image": relative}

    return write_images(folder, count, seed, one)
