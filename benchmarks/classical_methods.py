"""Classical segmentation baselines for the five tasks: the methods deep learning is said to replace.

Three methods, each adapted to every task (retinal vessels, cardiac short-axis MR, liver CT, lung nodule CT,
multimodal brain MR), written with numpy, scipy.ndimage and scikit-image library calls:

- ``threshold``: every voxel of the (smoothed) task feature whose intensity lies inside a class's intensity window
  gets that class (overlapping windows: the nearest class median). The windows are the 2.5th-97.5th percentiles of
  each class's intensities over the labelled TRAINING images; the retinal vessel threshold (on a black top-hat
  "darker than the local background" feature) is the value that maximises the mean Dice over the training images.
  Otsu's threshold is used where a task needs an unsupervised mask (the head for brain MR, the lungs for chest CT).
- ``region_growing``: flood fill (``skimage.segmentation.flood``) from a seed, accepting connected voxels within a
  tolerance of the seed's intensity. Seeds simulate the one click per structure per case a person gives in
  clinical use: the deepest point (maximum of the distance transform) of the largest connected component of the
  TRUE label of each class. This gives the region grower information from the test labels that the networks do
  not get. A structure absent from a case gets no click and stays empty. The tolerance of each class is the one
  (out of a few multiples of the class window's half-width) that maximises the mean Dice over TRAINING images.
- ``edge``: gradient magnitude (Sobel) of the smoothed feature, edges kept by hysteresis thresholding (the high
  and low thresholds are the 50th and 5th percentiles of the gradient on the true class boundaries of the TRAINING
  images), closed, the image split into the regions the closed edges enclose (slice by slice); each region takes the class whose
  window holds its mean intensity, edge voxels join their nearest region, masks are hole-filled and only the
  sensible components kept. Retinal vessels are thinner than two edge widths, so there the closed edges are
  filled (``binary_fill_holes``) and the voxels darker than their surroundings kept.

Task adaptations, shared by the three methods (``finish``): cardiac: the bright blood pools are LV or RV cavity by
anatomy (the LV is the pool, of a volume seen in training, most surrounded by myocardium-intensity tissue; the RV the
nearest other pool), the myocardium is the myocardium-intensity tissue within the training myocardial thickness of
the LV cavity, in-plane operations per slice (7-10 mm slices); liver: the largest liver component after an opening
that cuts bridges to neighbouring organs, holes filled (vessels, tumours), tumours only inside it; lung: nodules
only inside the lung fields (Otsu air threshold, outside air removed, filled), an opening whose radius is tuned on
training removes vessels, components smaller than the smallest training nodule dropped; brain: tissues only inside
the intracranial mask (largest component of the tissue windows, filled). Nothing is tuned on test cases.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, morphology, segmentation

TASKS = ("retinal", "cardiac", "liver", "lung", "brain")
METHODS = ("threshold", "region_growing", "edge")
#: task -> {class name: label index}; names as in the bundles' per-case metric columns
CLASSES: dict[str, dict[str, int]] = {
    "retinal": {"vessel": 1},
    "cardiac": {"rv": 1, "myo": 2, "lv": 3},
    "liver": {"liver": 1, "tumour": 2},
    "lung": {"nodule": 1},
    "brain": {"csf": 1, "gm": 2, "wm": 3},
}
#: tasks whose in-plane operations run slice by slice (thick slices or a 2D bundle)
PLANAR = {"retinal": True, "cardiac": True, "liver": False, "lung": False, "brain": True}
#: smoothing before every method (Gaussian sigma in mm; retinal in pixels of a 320 px photograph)
SMOOTH_MM = {"retinal": 0.8, "cardiac": 1.0, "liver": 1.5, "lung": 0.7, "brain": 0.6}
WINDOW_PERCENTILES = (2.5, 97.5)
TOLERANCE_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
LUNG_OPENING_MM = (0.0, 1.5, 2.5, 3.5)
MAX_SAMPLES = 200_000  # voxels per class and case used for the percentiles


@dataclass
class Case:
    """One labelled image in its own grid: image (C, *spatial) float32, label (*spatial) int, FOV mask or None."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, ...]
    mask: np.ndarray | None = None


@dataclass
class Params:
    """Everything tuned on the training split: class windows and medians, tolerances, edge thresholds, extras."""

    task: str
    windows: dict[int, np.ndarray] = field(default_factory=dict)  # class -> (channels, 2) low/high
    centres: dict[int, np.ndarray] = field(default_factory=dict)  # class -> (channels,) median
    scales: np.ndarray | None = None  # (channels,) spread used to compare distances to medians
    tolerance: dict[int, float] = field(default_factory=dict)  # class -> flood tolerance
    grow_channel: dict[int, int] = field(default_factory=dict)  # class -> feature channel flooded
    edge_low: float = 0.0
    edge_high: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------ loading


def load_case(task: str, root: str | Path, entry: dict) -> Case:
    """Read one ``dataset.json`` entry of ``task`` (paths relative to ``root``) in the file's own voxel grid."""
    import nibabel as nib
    from PIL import Image

    root = Path(root)
    files = entry["image"] if isinstance(entry["image"], (list, tuple)) else [entry["image"]]
    name = Path(files[0]).name.split(".")[0]
    if len(files) > 1 and re.fullmatch(r".+_\d{4}", name):
        name = name[:-5]  # nnU-Net channel suffix: the case is named as the bundle's evaluation names it
    if task == "retinal":
        image = np.asarray(Image.open(root / files[0]).convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0
        label = (np.asarray(Image.open(root / entry["label"]).convert("L")) > 0).astype(np.int16)
        mask = np.asarray(Image.open(root / entry["mask"]).convert("L")) > 0 if entry.get("mask") else None
        return Case(name, image, label, (1.0, 1.0), mask if mask is not None else np.ones(label.shape, bool))
    channels = []
    for f in files:
        nii = nib.load(root / f)
        data = np.asarray(nii.dataobj, np.float32)
        channels += [data[..., i] for i in range(data.shape[-1])] if data.ndim == 4 else [data]
        spacing = tuple(float(z) for z in nii.header.get_zooms()[:3])
    label = np.rint(np.asarray(nib.load(root / entry["label"]).dataobj)).astype(np.int16)
    return Case(name, np.stack(channels), label, spacing)


# ------------------------------------------------------------------------------------------------ helpers


def footprint_mm(radius_mm: float, spacing: Sequence[float], planar: bool) -> np.ndarray:
    """An ellipsoidal structuring element of ``radius_mm`` in voxels of ``spacing`` (flat in z when planar)."""
    radii = [max(radius_mm / s, 0.0) for s in spacing]
    if planar and len(radii) == 3:
        radii[2] = 0.0
    half = [int(math.floor(r)) for r in radii]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist = sum((g / r) ** 2 if r > 0 else np.zeros_like(g, float) for g, r in zip(grids, radii))
    return dist <= 1.0


def structure(ndim: int, planar: bool) -> np.ndarray:
    """Face connectivity, without neighbours across slices when planar."""
    s = ndi.generate_binary_structure(ndim, 1)
    if planar and ndim == 3:
        s[:, :, 0] = s[:, :, 2] = False
    return s


def fill_holes(mask: np.ndarray, planar: bool) -> np.ndarray:
    """Holes filled in 3D and, in stacks, also slice by slice."""
    filled = ndi.binary_fill_holes(mask)
    if mask.ndim == 3:
        filled |= ndi.binary_fill_holes(mask, structure=structure(3, True))
    return filled


def largest_component(mask: np.ndarray, planar: bool = False) -> np.ndarray:
    """The largest connected component of ``mask`` (empty stays empty)."""
    labels, n = ndi.label(mask, structure=ndi.generate_binary_structure(mask.ndim, mask.ndim))
    if n == 0:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def remove_small(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """``mask`` without the connected components of fewer than ``min_voxels`` voxels."""
    return morphology.remove_small_objects(mask.astype(bool), max_size=max(int(min_voxels) - 1, 0), connectivity=mask.ndim)


def smooth(x: np.ndarray, sigma_mm: float, spacing: Sequence[float], planar: bool) -> np.ndarray:
    """Gaussian smoothing with sigma in mm (none across slices when planar)."""
    sigma = [sigma_mm / s for s in spacing]
    if planar and len(sigma) == 3:
        sigma[2] = 0.0
    return ndi.gaussian_filter(x.astype(np.float32), sigma)


def features(task: str, case: Case) -> np.ndarray:
    """The smoothed, per-case normalised feature channels (C, *spatial) every method of ``task`` works on."""
    planar, sigma = PLANAR[task], SMOOTH_MM[task]
    if task == "retinal":
        fov = case.mask
        scale = max(case.label.shape) / 320.0
        green = smooth(case.image[1], sigma * scale, case.spacing, True)
        green = np.where(fov, green, np.median(green[fov]))
        # darker than the local background: black top-hat wider than the widest vessel (about 6 px at 320 px)
        tophat = morphology.black_tophat(green, morphology.disk(max(3, round(7 * scale))))
        return (np.where(fov, tophat, 0.0) / max(float(np.median(green[fov])), 1e-6))[None].astype(np.float32)
    if task == "cardiac":
        low, high = np.percentile(case.image[0], (1, 99))
        scaled = np.clip((case.image[0] - low) / max(high - low, 1e-6), 0, 1)
        return smooth(scaled, sigma, case.spacing, planar)[None]
    if task in ("liver", "lung"):
        return smooth(case.image[0], sigma, case.spacing, planar)[None]
    # brain: every modality divided by its median inside the head (Otsu on the first modality, filled)
    head = fill_holes(largest_component(case.image[0] > filters.threshold_otsu(case.image[0])), planar)
    out = [smooth(ch / max(float(np.median(ch[head])), 1e-6), sigma, case.spacing, planar) for ch in case.image]
    return np.stack(out) * head[None]


def click_seeds(task: str, label: np.ndarray, spacing: Sequence[float]) -> dict[int, tuple[int, ...]]:
    """One simulated click per class present: the deepest point of the class's largest true component."""
    seeds = {}
    for index in CLASSES[task].values():
        mask = label == index
        if not mask.any():
            continue
        comp = largest_component(mask)
        dist = ndi.distance_transform_edt(comp, sampling=spacing)
        seeds[index] = tuple(int(i) for i in np.unravel_index(int(np.argmax(dist)), dist.shape))
    return seeds


def truth_mask(task: str, label: np.ndarray, index: int) -> np.ndarray:
    """The true mask of class ``index`` as the bundle scores it (liver: labels 1 and 2 together, as in LiTS)."""
    return label >= 1 if (task == "liver" and index == 1) else label == index


def dice(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Dice of two binary masks inside ``mask``; 1 when both are empty."""
    if mask is not None:
        pred, truth = pred & mask, truth & mask
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most ``MAX_SAMPLES`` of the rows of ``values``."""
    if len(values) <= MAX_SAMPLES:
        return values
    return values[rng.choice(len(values), MAX_SAMPLES, replace=False)]


# ------------------------------------------------------------------------------------------------ class maps


def classify(task: str, feat: np.ndarray, params: Params) -> np.ndarray:
    """Class index per voxel (or per row of region means) from the training windows; 0 outside every window."""
    flat = feat.reshape(feat.shape[0], -1)
    out = np.zeros(flat.shape[1], np.int16)
    best = np.full(flat.shape[1], np.inf)
    for index, window in params.windows.items():
        inside = np.all((flat >= window[:, :1]) & (flat <= window[:, 1:]), axis=0)
        dist = np.sqrt((((flat - params.centres[index][:, None]) / params.scales[:, None]) ** 2).sum(axis=0))
        take = inside & (dist < best)
        out[take], best[take] = index, dist[take]
    return out.reshape(feat.shape[1:])


def edge_map(task: str, feat: np.ndarray, params: Params, spacing: Sequence[float]) -> np.ndarray:
    """Closed hysteresis edges of the Sobel gradient magnitude of the feature's edge channel."""
    planar = PLANAR[task]
    axes = (0, 1) if planar else None
    grad = filters.sobel(feat[int(params.extra.get("edge_channel", 0))], axis=axes)
    edges = filters.apply_hysteresis_threshold(grad, params.edge_low, params.edge_high)
    return morphology.closing(edges, footprint_mm(params.extra.get("close_mm", 1.5), spacing, planar))


def edge_classes(task: str, feat: np.ndarray, params: Params, spacing: Sequence[float]) -> np.ndarray:
    """Regions enclosed by closed edges, each classified by its mean feature; edge voxels join the nearest region."""
    edges = edge_map(task, feat, params, spacing)
    # regions slice by slice: a gap in a 3D edge surface then leaks within one slice only
    regions, n = ndi.label(~edges, structure=structure(edges.ndim, True))
    if n == 0:
        return np.zeros(edges.shape, np.int16)
    ids = np.arange(1, n + 1)
    means = np.stack([np.asarray(ndi.mean(ch, regions, ids)) for ch in feat])  # (C, n)
    region_class = np.concatenate([[0], classify(task, means, params)]).astype(np.int16)
    out = region_class[regions]
    nearest = ndi.distance_transform_edt(edges, sampling=spacing, return_distances=False, return_indices=True)
    return out[tuple(nearest)]


def _class_distance(feat: np.ndarray, params: Params, index: int) -> np.ndarray:
    """Scaled distance of every voxel's features to the training median of class ``index``."""
    shape = (-1,) + (1,) * (feat.ndim - 1)
    return np.sqrt((((feat - params.centres[index].reshape(shape)) / params.scales.reshape(shape)) ** 2).sum(axis=0))


def grow(feat: np.ndarray, seed: tuple[int, ...], channel: int, tolerance: float) -> np.ndarray:
    """Region growing: the voxels face-connected to ``seed`` within ``tolerance`` of its intensity."""
    return segmentation.flood(feat[channel], seed, connectivity=1, tolerance=float(tolerance))


# ------------------------------------------------------------------------------------------- task finishing


def _component_stats(labels: np.ndarray, ids: np.ndarray, values: np.ndarray, fn) -> np.ndarray:
    """``fn`` (an ndimage reduction) of ``values`` over each labelled component."""
    return np.asarray(fn(values, labels, ids), float) if len(ids) else np.zeros(0)


def cardiac_assign(bright: np.ndarray, myo: np.ndarray, params: Params, spacing: Sequence[float]) -> np.ndarray:
    """Blood pools and myocardium-intensity tissue into RV, myocardium and LV by anatomy (see the module doc)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels, n = ndi.label(bright, structure=ndi.generate_binary_structure(3, 2))
    out = np.zeros(bright.shape, np.int16)
    if n == 0:
        return out
    ids = np.arange(1, n + 1)
    volumes = np.bincount(labels.ravel(), minlength=n + 1)[1:] * voxel_ml
    ring = ndi.grey_dilation(labels, footprint=footprint_mm(3.0, spacing, True)) * (labels == 0)
    myo_share = _component_stats(ring, ids, myo.astype(float), ndi.mean)
    myo_share = np.nan_to_num(myo_share)
    ok = (volumes >= 0.5 * params.extra["lv_min_ml"]) & (volumes <= 1.5 * params.extra["lv_max_ml"])
    # mostly surrounded by myocardium-intensity tissue, and of a volume like the training LV cavities
    score = myo_share - 0.5 * np.abs(np.log(np.maximum(volumes, 1e-6) / params.extra["lv_median_ml"]))
    score = np.where(ok, score, score - 10.0)
    # ... and with another pool of RV size just across the septum: the gap (mm) to it is penalised
    sizeable = volumes >= 0.3 * params.extra["rv_min_ml"]
    top = np.argsort(-score)[:4]
    for i in top:
        dist = ndi.distance_transform_edt(labels != ids[i], sampling=spacing)
        gaps = _component_stats(labels, ids, dist, ndi.minimum)
        gaps[i] = np.inf
        score[i] -= 0.05 * min(float(np.min(np.where(sizeable, gaps, np.inf))), 40.0)
    lv_id = int(ids[top[np.argmax(score[top])]])
    lv = labels == lv_id
    planar_dist = np.stack(
        [ndi.distance_transform_edt(~lv[..., k], sampling=spacing[:2]) if lv[..., k].any()
         else np.full(lv.shape[:2], np.inf) for k in range(lv.shape[2])], axis=-1
    )  # fmt: skip
    band = planar_dist <= params.extra["myo_thickness_mm"]
    others = (ids != lv_id) & (volumes >= 0.3 * params.extra["rv_min_ml"]) & (volumes <= 2 * params.extra["rv_max_ml"])
    if others.any():
        dist3 = ndi.distance_transform_edt(~lv, sampling=spacing)
        gap = _component_stats(labels, ids, dist3, ndi.minimum)
        rv_id = int(ids[others][np.argmin(gap[others])])
        out[labels == rv_id] = 1
    out[myo & band & ~lv & (out == 0)] = 2
    out[lv] = 3
    # the LV cavity is what the myocardium encloses, slice by slice
    inner = fill_holes(out >= 2, True) & (out == 0)
    out[inner] = 3
    return out


def finish(task: str, classes: np.ndarray, case: Case, feat: np.ndarray, params: Params, method: str) -> np.ndarray:
    """Task-specific clean-up shared by the three methods: anatomy rules, hole filling, sensible components."""
    spacing, planar = case.spacing, PLANAR[task]
    voxel_mm3 = float(np.prod(spacing))
    if task == "retinal":
        vessel = remove_small(classes == 1, params.extra["min_vessel_px"]) & case.mask
        return vessel.astype(np.int16)
    if task == "cardiac":
        if method == "region_growing":
            return classes
        return cardiac_assign((classes == 1) | (classes == 3), classes == 2, params, spacing)
    if task == "liver":
        liver = (classes == 1) | (classes == 2)
        if method != "region_growing":
            liver = morphology.opening(liver, footprint_mm(params.extra["liver_open_mm"], spacing, False))
            liver = largest_component(liver)
        liver = fill_holes(morphology.closing(liver, footprint_mm(2.0, spacing, False)), planar)
        tumour = (classes == 2) & liver
        if method != "region_growing":
            # inside the liver, what is not liver parenchyma intensity and darker than it is tumour
            tumour |= liver & (feat[0] < params.windows[1][0, 0]) & (feat[0] >= params.windows[2][0, 0])
            tumour = remove_small(fill_holes(tumour, planar), params.extra["min_tumour_mm3"] / voxel_mm3)
        out = liver.astype(np.int16)
        out[tumour] = 2
        return out
    if task == "lung":
        nodule = (classes == 1) & lung_fields(case)
        radius = params.extra.get("lung_open_mm", 0.0)
        if method != "region_growing" and radius > 0:
            nodule = morphology.opening(nodule, footprint_mm(radius, spacing, False))
        nodule = remove_small(nodule, params.extra["min_nodule_mm3"] / voxel_mm3)
        return nodule.astype(np.int16)
    # brain: tissues inside the intracranial mask
    if method != "region_growing":
        brain = largest_component(morphology.opening(classes > 0, footprint_mm(1.0, spacing, True)))
        brain = fill_holes(brain, planar)
        classes = np.where(brain, classes, 0).astype(np.int16)
    return classes


def lung_fields(case: Case) -> np.ndarray:
    """Lungs with their vessels and nodules: air-like voxels (Otsu) not connected to the outside air, closed, filled."""
    hu = case.image[0]
    air = hu < filters.threshold_otsu(hu)
    labels, _ = ndi.label(air)
    border = np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(),
                                       labels[:, -1].ravel()]))  # fmt: skip
    lungs = air & ~np.isin(labels, border)
    lungs = morphology.closing(lungs, footprint_mm(4.0, case.spacing, False))
    return fill_holes(lungs, True)


# ------------------------------------------------------------------------------------------------ methods


def threshold_method(task: str, case: Case, params: Params, feat: np.ndarray | None = None) -> np.ndarray:
    """Segment ``case`` with the training intensity windows (retinal: the training-tuned top-hat threshold)."""
    feat = features(task, case) if feat is None else feat
    classes = classify(task, feat, params)
    return finish(task, classes, case, feat, params, "threshold")


def region_growing_method(
    task: str, case: Case, params: Params, seeds: dict[int, tuple[int, ...]], feat: np.ndarray | None = None
) -> np.ndarray:
    """Segment ``case`` by flood fill from one click per structure, tolerances tuned on training images."""
    feat = features(task, case) if feat is None else feat
    best = np.full(feat.shape[1:], np.inf)
    out = np.zeros(feat.shape[1:], np.int16)
    for index, seed in sorted(seeds.items()):
        region = grow(feat, seed, params.grow_channel[index], params.tolerance[index])
        if task == "cardiac" and index == 2 and 3 in seeds:
            lv = grow(feat, seeds[3], params.grow_channel[3], params.tolerance[3])
            region &= ndi.distance_transform_edt(~lv, sampling=case.spacing) <= params.extra["myo_thickness_mm"]
        # a voxel claimed by several grown regions goes to the class whose training median is nearest
        dist = _class_distance(feat, params, index)
        take = region & (dist < best)
        out[take], best[take] = index, dist[take]
    return finish(task, out, case, feat, params, "region_growing")


def edge_method(task: str, case: Case, params: Params, feat: np.ndarray | None = None) -> np.ndarray:
    """Segment ``case`` from closed Sobel edges: enclosed regions classified by mean intensity, filled."""
    feat = features(task, case) if feat is None else feat
    if task == "retinal":
        edges = edge_map(task, feat, params, case.spacing)
        filled = ndi.binary_fill_holes(edges) & (feat[0] >= 0.5 * params.windows[1][0, 0])
        return finish(task, filled.astype(np.int16), case, feat, params, "edge")
    return finish(task, edge_classes(task, feat, params, case.spacing), case, feat, params, "edge")


def segment(
    task: str, method: str, case: Case, params: Params, seeds: dict[int, tuple[int, ...]] | None = None
) -> np.ndarray:
    """Run one of ``METHODS`` on ``case``; region growing needs ``seeds`` (``click_seeds`` of the true label)."""
    if method == "threshold":
        return threshold_method(task, case, params)
    if method == "region_growing":
        return region_growing_method(task, case, params, seeds if seeds is not None else {})
    if method == "edge":
        return edge_method(task, case, params)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


# ------------------------------------------------------------------------------------------------ tuning


def tune(task: str, cases: Sequence[Case], max_search_cases: int = 6, seed: int = 0) -> Params:
    """Tune every parameter of ``task``'s three methods on labelled TRAINING cases (never on test cases)."""
    if task not in CLASSES:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if not cases:
        raise ValueError(f"{task}: tuning needs at least one labelled training case")
    rng = np.random.default_rng(seed)
    feats = [features(task, c) for c in cases]
    params = Params(task)
    samples: dict[int, list[np.ndarray]] = {i: [] for i in CLASSES[task].values()}
    for case, feat in zip(cases, feats):
        region = case.mask if case.mask is not None else np.ones(case.label.shape, bool)
        for index in samples:
            sel = (case.label == index) & region
            if sel.any():
                samples[index].append(_sample(feat[:, sel].T, rng))
    spread = []
    for index, chunks in samples.items():
        channels = feats[0].shape[0]
        if not chunks:  # a class never seen in training: an empty window
            params.windows[index] = np.tile([np.inf, -np.inf], (channels, 1))
            params.centres[index] = np.full(channels, np.inf)
            continue
        values = np.concatenate(chunks)
        low, high = np.percentile(values, WINDOW_PERCENTILES, axis=0)
        params.windows[index] = np.stack([low, high], axis=1)
        params.centres[index] = np.median(values, axis=0)
        spread.append(high - low)
    params.scales = np.maximum(np.mean(spread, axis=0), 1e-6)
    for index in samples:  # flood the channel where the class stands out most from the other classes
        others = [params.centres[j] for j in samples if j != index] or [np.zeros_like(params.centres[index])]
        with np.errstate(invalid="ignore"):
            contrast = np.min([np.abs(params.centres[index] - o) for o in others], axis=0) / params.scales
        params.grow_channel[index] = int(np.nan_to_num(contrast, posinf=0.0).argmax())
    _tune_edges(task, cases, feats, params, rng)
    _tune_extras(task, cases, feats, params)
    _tune_tolerances(task, cases[:max_search_cases], feats[:max_search_cases], params)
    return params


def _tune_edges(task: str, cases: Sequence[Case], feats: Sequence[np.ndarray], params: Params, rng) -> None:
    """Hysteresis thresholds: 50th and 5th percentiles of the gradient on the true boundaries (training)."""
    channel = 0
    if task == "brain":  # T1-like contrast: the channel with the widest spread of class medians
        medians = np.stack(list(params.centres.values()))
        channel = int(np.argmax((medians.max(0) - medians.min(0)) / params.scales))
    params.extra["edge_channel"] = channel
    values = []
    for case, feat in zip(cases, feats):
        grad = filters.sobel(feat[channel], axis=(0, 1) if PLANAR[task] else None)
        boundary = segmentation.find_boundaries(case.label, mode="inner")
        if case.mask is not None:
            boundary &= ndi.binary_erosion(case.mask, iterations=3)
        if boundary.any():
            values.append(_sample(grad[boundary], rng))
    grads = np.concatenate(values) if values else np.array([1.0])
    params.edge_high = float(np.percentile(grads, 50))
    params.edge_low = float(np.percentile(grads, 5))
    params.extra["close_mm"] = {"retinal": 1.0, "cardiac": 1.5, "liver": 2.0, "lung": 1.0, "brain": 0.9}[task]


def _tune_extras(task: str, cases: Sequence[Case], feats: Sequence[np.ndarray], params: Params) -> None:
    """Task-specific sizes from the training labels (volumes, thickness) and the retinal threshold by Dice."""
    if task == "retinal":
        vessel_values = np.concatenate([f[0][c.label == 1] for c, f in zip(cases, feats)])
        candidates = np.percentile(vessel_values, np.arange(2, 60, 2))
        scores = [np.mean([dice(f[0] >= t, c.label == 1, c.mask) for c, f in zip(cases, feats)]) for t in candidates]
        params.windows[1] = np.array([[float(candidates[int(np.argmax(scores))]), np.inf]])
        area = np.mean([c.mask.sum() for c in cases])
        params.extra["min_vessel_px"] = max(3.0, 2e-4 * area)
    elif task == "cardiac":
        lv = [(c.label == 3).sum() * np.prod(c.spacing) / 1000 for c in cases]
        rv = [(c.label == 1).sum() * np.prod(c.spacing) / 1000 for c in cases]
        params.extra.update(lv_min_ml=float(min(lv)), lv_max_ml=float(max(lv)), lv_median_ml=float(np.median(lv)))
        params.extra.update(rv_min_ml=float(min(rv)), rv_max_ml=float(max(rv)))
        thick = []
        for c in cases:
            for k in range(c.label.shape[2]):
                lv_k, myo_k = c.label[..., k] == 3, c.label[..., k] == 2
                if lv_k.any() and myo_k.any():
                    thick.append(ndi.distance_transform_edt(~lv_k, sampling=c.spacing[:2])[myo_k])
        params.extra["myo_thickness_mm"] = float(np.percentile(np.concatenate(thick), 98)) if thick else 12.0
    elif task == "liver":
        vols = _component_volumes([c for c in cases], 2)
        params.extra["min_tumour_mm3"] = 0.5 * float(min(vols)) if vols else 50.0
        params.extra["liver_open_mm"] = 4.0
    elif task == "lung":
        vols = _component_volumes(cases, 1)
        params.extra["min_nodule_mm3"] = 0.5 * float(min(vols)) if vols else 10.0
        scores = {}
        for radius in LUNG_OPENING_MM:
            params.extra["lung_open_mm"] = radius
            scores[radius] = np.mean([dice(threshold_method(task, c, params, f) == 1, c.label == 1)
                                      for c, f in zip(cases[:4], feats[:4])])  # fmt: skip
        params.extra["lung_open_mm"] = max(scores, key=scores.get)


def _component_volumes(cases: Sequence[Case], index: int) -> list[float]:
    """Volumes (mm3) of the connected components of class ``index`` over ``cases``."""
    vols = []
    for c in cases:
        labels, n = ndi.label(c.label == index, structure=ndi.generate_binary_structure(c.label.ndim, c.label.ndim))
        if n:
            vols += list(np.bincount(labels.ravel())[1:] * float(np.prod(c.spacing)))
    return vols


def _tune_tolerances(task: str, cases: Sequence[Case], feats: Sequence[np.ndarray], params: Params) -> None:
    """Flood tolerance per class: the multiple of the window half-width with the best mean training Dice."""
    seeds = [click_seeds(task, c.label, c.spacing) for c in cases]
    for index in CLASSES[task].values():
        channel = params.grow_channel[index]
        low, high = params.windows[index][channel]
        if task == "retinal":
            high = float(np.percentile(np.concatenate([f[0][c.label == 1] for c, f in zip(cases, feats)]), 97.5))
        half = (high - low) / 2 if np.isfinite(high - low) else 1.0
        best, best_score = half, -1.0
        for factor in TOLERANCE_FACTORS:
            scores = []
            for case, feat, seed in zip(cases, feats, seeds):
                if index in seed:
                    region = grow(feat, seed[index], channel, factor * half)
                    scores.append(dice(region, truth_mask(task, case.label, index), case.mask))
            score = float(np.mean(scores)) if scores else 0.0
            if score > best_score:
                best, best_score = factor * half, score
        params.tolerance[index] = float(best)
