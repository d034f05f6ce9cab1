"""Architecture benchmark: patch CNN, FCN, U-Net, FCN + RNN and U-Net + RNN on the same synthetic data, the same
split and the same CPU wall-clock training budget, for two tasks, so that textbook claims become measured numbers.

Tasks (data written by the tasks' generators, ``synthetic.write_dataset``, preprocessed as the ``train.json`` of the
bundle doing the task (``common.profile``: the bundle whose ``tooling.json`` names it) does, kept in memory):

- ``retinal``: synthetic colour fundus photographs (``synthetic/retinal.py``), RGB scaled to
  0..1, two classes; Dice of the vessel class inside the field of view (FOV), per photograph, averaged.
- ``cardiac``: synthetic short-axis MR stacks, ED and ES per subject (``synthetic/cardiac.py``),
  resampled to 1.25 mm in-plane (slice spacing kept), percentile 1-99 scaled to 0..1; every slice is a 2D input.
  Dice per class (RV, myocardium, LV) of each frame's stacked slices, mean over the three classes and the frames.

A labelled "image" is one photograph (retinal) or one frame, i.e. one subject's ED or ES stack (cardiac): the
training pool, the data-efficiency counts and the test set count these. One fixed split per task: the training
pool and the held-out test set are the same for every architecture; the data-efficiency subsets are nested
prefixes of one seeded permutation of the pool.

Networks are read from the bundles' configs (``network_def``) with the channels overridden for the other task:
the patch CNN from ``brain_tissue_cnn2d/configs/train.json``, the FCN and FCN + ReNet from ``cardiac_mr_fcn``
(``train.json``, ``train_rnn.json``), the U-Net and U-Net + ReNet from ``retinal_vessel_unet``. Dense networks
train on random crops (three in four centred on a foreground pixel) with light flips, the bundle's DiceCELoss and
Adam (lr 1e-3); the patch CNN on class-balanced 33x33 patches with cross-entropy on the centre pixel and is
evaluated densely (``forward_dense``). Every run stops after ``budget_s`` seconds of training (wall clock, sampling
included); held-out Dice is measured every ``eval_every_s`` training seconds and at the end (evaluation time not
counted). Reported Dice is the network at the end of the budget; the best Dice seen during training is listed too
(it is chosen on the test set itself, so it is optimistic). Whole images are evaluated in one pass, zero-padded at
the far end to a multiple of 16 and cropped back (the U-Net needs a multiple of 8). Larger images: retinal
photographs generated at twice the training size (the generator scales vessel widths with the photograph, so this
also tests a change of scale), the cardiac test frames zero-padded (air) to ``cardiac_large_factor`` times the
field of view, the anatomy unchanged (so their Dice compares with the regular one); "accepted as is" says whether
the network runs on them without padding.

Command line (``--quick``: tiny images and budgets, a smoke test in well under a minute)::

    python benchmarks/architectures.py --output_dir OUT [--quick] [--budget_s 60] [--label_counts 2,4,8,16] ...

Writes ``results.csv``, ``data_efficiency.csv``, ``learning_curves.csv``, ``results.md``, ``learning_curves.png``
and ``data_efficiency.png`` into ``output_dir``. Every field of :class:`Settings` is a command-line option.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Before torch starts its OpenMP pool: busy-waiting threads slow training tens of times when another process
# shares the cores (measured here: a U-Net step 0.05 s with 1 thread, 3 s with 2 spinning threads, 0.09 s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import fire
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from charts import draw_charts
from monai.bundle import ConfigParser
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from monai.transforms import Compose
from options import as_tuple

import synthetic
from common.networks import PatchCNN
from common.profile import BundleProfile, bundle_names, bundle_scripts, describe

ARCHITECTURES = ("patch_cnn", "fcn", "unet", "fcn_rnn", "unet_rnn")
#: architecture -> (bundle, config files merged in order) whose ``network_def`` builds it (the benchmark's design:
#: each architecture is the one a bundle ships)
NETWORK_CONFIGS = {
    "patch_cnn": ("brain_tissue_cnn2d", ("train.json",)),
    "fcn": ("cardiac_mr_fcn", ("train.json",)),
    "unet": ("retinal_vessel_unet", ("train.json",)),
    "fcn_rnn": ("cardiac_mr_fcn", ("train.json", "train_rnn.json")),
    "unet_rnn": ("retinal_vessel_unet", ("train.json", "train_rnn.json")),
}
PAD_MULTIPLE = 16
POSITIVE_FRACTION = 0.75  # share of dense crops centred on a foreground pixel (the bundles' pos 3 : neg 1)
LEARNING_RATE = 1e-3
COLOURS = {"patch_cnn": "#d62728", "fcn": "#1f77b4", "unet": "#2ca02c", "fcn_rnn": "#9467bd", "unet_rnn": "#ff7f0e"}


@dataclass
class Settings:
    """Everything a run depends on; each field is a command-line option (sizes in pixels, times in seconds)."""

    tasks: tuple[str, ...] = ("retinal", "cardiac")
    architectures: tuple[str, ...] = ARCHITECTURES
    budget_s: float = 36.0  # training budget of the main runs (all the training pool)
    small_budget_s: float | None = None  # budget of the data-efficiency runs; None: budget_s
    eval_every_s: float = 9.0  # training seconds between held-out evaluations of the main runs
    label_counts: tuple[int, ...] = (2, 4, 8, 16)  # labelled images of the data-efficiency runs
    threads: int = 2  # torch.set_num_threads
    seed: int = 0
    batch_size: int = 4  # crops per step of the dense networks
    patch_batch_size: int = 128  # patches per step of the patch CNN
    retinal_size: int = 320  # photograph side (each case varies by up to 10 %)
    retinal_train: int = 16  # photographs in the training pool
    retinal_test: int = 4
    retinal_large: int = 2  # test photographs generated at twice retinal_size
    retinal_crop: int = 96
    retinal_target: float = 0.6
    cardiac_size: int | None = None  # in-plane voxels of a stack before resampling; None: the generator's 190-250 mm
    cardiac_train_subjects: int = 8  # two frames (ED, ES) each
    cardiac_test_subjects: int = 2
    cardiac_large_factor: float = 2.0  # the test frames are also evaluated zero-padded to this times the FOV
    cardiac_crop: int = 128
    cardiac_target: float = 0.8
    data_dir: str | None = None  # where the synthetic data is written; None: a temporary folder


QUICK = {
    "budget_s": 1.0,
    "eval_every_s": 0.5,
    "label_counts": (2, 4),
    "retinal_size": 64,
    "retinal_train": 4,
    "retinal_test": 2,
    "retinal_large": 1,
    "retinal_crop": 48,
    "cardiac_size": 48,
    "cardiac_train_subjects": 2,
    "cardiac_test_subjects": 1,
    "cardiac_crop": 48,
}


@dataclass
class Slice:
    """One 2D network input: image (C, H, W) in 0..1, label (H, W) class indices, mask (H, W) where Dice counts."""

    image: torch.Tensor
    label: torch.Tensor
    mask: torch.Tensor


Case = list[Slice]  # one labelled image: its 2D slices (one for a photograph, a stack's slices for a cardiac frame)


@dataclass
class TaskData:
    """A task's fixed split, in memory: training pool, test set and larger test images, as lists of cases."""

    name: str
    in_channels: int
    num_classes: int
    crop: int
    target: float
    train: list[Case]
    test: list[Case]
    large: list[Case]
    large_note: str


@dataclass
class Run:
    """One training run: its learning curve ``[(training s, held-out Dice)]`` and the trained network."""

    network: nn.Module
    steps: int
    trained_s: float
    curve: list[tuple[float, float]] = field(default_factory=list)
    infer_s: float = float("nan")


# ----------------------------------------------------------------------------------------------- bundle configs


def task_profile(task: str) -> BundleProfile:
    """The profile of the bundle doing ``task`` (the first by name whose ``tooling.json`` names it)."""
    for name in bundle_names():
        p = describe(name)
        if p.task == task:
            return p
    raise ValueError(f"no bundle does the task {task!r}")


def bundle_content(
    bundle: str, item: str, files: Sequence[str] = ("train.json",), values: dict[str, Any] | None = None
) -> Any:
    """The parsed ``item`` of a bundle's configs merged in order, with ``values`` set first (ids with ``#``)."""
    root = describe(bundle).root
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / f) for f in files])
    for key, value in (values or {}).items():
        parser[key] = value
    with bundle_scripts(root):
        return parser.get_parsed_content(item, lazy=False)


def build_network(architecture: str, in_channels: int, out_channels: int) -> nn.Module:
    """The ``network_def`` of the architecture's bundle config, with the task's input channels and classes."""
    bundle, files = NETWORK_CONFIGS[architecture]
    values = {"network_def#in_channels": in_channels, "network_def#out_channels": out_channels}
    return bundle_content(bundle, "network_def", files, values)


def count_parameters(network: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------------- data


def read_entries(dataset_json: str | Path, split: str) -> list[dict[str, str]]:
    """The ``split`` list of a ``dataset.json`` with absolute image / label / mask paths."""
    root = Path(dataset_json).parent
    with open(dataset_json) as f:
        entries = json.load(f)[split]
    return [{k: str(root / v) for k, v in e.items() if k in ("image", "label", "mask")} for e in entries]


def load_cases(entries: Iterable[dict[str, str]], transform: Compose) -> list[Case]:
    """Preprocess every entry and split it into its 2D slices (a 2D image is one slice)."""
    cases = []
    for entry in entries:
        d = transform(entry)
        image, label = torch.as_tensor(d["image"]).float(), torch.as_tensor(d["label"])[0].round().long()
        mask = torch.as_tensor(d["mask"])[0] > 0 if "mask" in d else torch.ones_like(label, dtype=torch.bool)
        if image.dim() == 3:
            cases.append([Slice(image, label, mask)])
        else:
            cases.append([Slice(image[..., k], label[..., k], mask[..., k]) for k in range(image.shape[-1])])
    return cases


def retinal_data(s: Settings, data_dir: Path) -> TaskData:
    """Synthetic fundus photographs: training pool, test set, and test photographs at twice the size."""
    small = synthetic.write_dataset(
        "retinal", data_dir / "retinal", s.retinal_train, s.retinal_test, seed=s.seed, size=s.retinal_size
    )
    large = synthetic.write_dataset(
        "retinal", data_dir / "retinal_large", 0, s.retinal_large, seed=s.seed + 1, size=2 * s.retinal_size
    )
    bundle = task_profile("retinal")
    transform = Compose(bundle_content(bundle.name, "preprocessing"))
    note = f"{s.retinal_large} new photographs of about {2 * s.retinal_size} px (twice the training size)"
    return TaskData(
        name="retinal",
        in_channels=len(bundle.channels),
        num_classes=len(bundle.classes),
        crop=s.retinal_crop,
        target=s.retinal_target,
        train=load_cases(read_entries(small, "training"), transform),
        test=load_cases(read_entries(small, "test"), transform),
        large=load_cases(read_entries(large, "test"), transform),
        large_note=note,
    )


def pad_case(case: Case, factor: float) -> Case:
    """A case's slices zero-padded (air, label background) around the centre to ``factor`` times each side."""
    padded = []
    for sl in case:
        h, w = sl.label.shape
        dh, dw = round(h * (factor - 1)), round(w * (factor - 1))
        pad = [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2]
        padded.append(Slice(F.pad(sl.image, pad), F.pad(sl.label, pad), F.pad(sl.mask, pad, value=True)))
    return padded


def cardiac_data(s: Settings, data_dir: Path) -> TaskData:
    """Synthetic short-axis stacks, one case per frame; the larger images are the test frames with a padded FOV."""
    path = synthetic.write_dataset(
        "cardiac", data_dir / "cardiac", s.cardiac_train_subjects, s.cardiac_test_subjects, seed=s.seed,
        size=s.cardiac_size,
    )  # fmt: skip
    bundle = task_profile("cardiac")
    transform = Compose(bundle_content(bundle.name, "preprocessing"))
    test = load_cases(read_entries(path, "test"), transform)
    large = [pad_case(c, s.cardiac_large_factor) for c in test]
    side = int(np.mean([c[0].label.shape for c in large]))
    note = f"the test frames zero-padded to {s.cardiac_large_factor:g}x the field of view (about {side} px)"
    return TaskData(
        name="cardiac",
        in_channels=len(bundle.channels),
        num_classes=len(bundle.classes),
        crop=s.cardiac_crop,
        target=s.cardiac_target,
        train=load_cases(read_entries(path, "training"), transform),
        test=test,
        large=large,
        large_note=note,
    )


#: task -> its data loader (the benchmark's two tasks)
TASK_DATA: dict[str, Callable[[Settings, Path], TaskData]] = {"retinal": retinal_data, "cardiac": cardiac_data}


# ------------------------------------------------------------------------------------------------- sampling


def _pad_to(sl: Slice, size: int) -> Slice:
    """The slice zero-padded at the far end to at least ``size`` x ``size`` (mask false in the padding)."""
    h, w = sl.label.shape
    pad = [0, max(size - w, 0), 0, max(size - h, 0)]
    return Slice(F.pad(sl.image, pad), F.pad(sl.label, pad), F.pad(sl.mask, pad, value=False))


def _random_flips(rng: np.random.Generator, *arrays: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Flip the arrays together along each of the last two (spatial) axes with probability 1/2."""
    for axis in (-1, -2):
        if rng.random() < 0.5:
            arrays = tuple(a.flip(axis) for a in arrays)
    return arrays


class CropSampler:
    """Random ``crop`` x ``crop`` training crops, centred on a foreground pixel three times in four (else on any
    pixel inside the mask), flipped at random; labels ``(B, 1, crop, crop)`` for DiceCELoss."""

    def __init__(self, cases: Sequence[Case], crop: int, rng: np.random.Generator) -> None:
        self.slices = [_pad_to(sl, crop) for case in cases for sl in case]
        self.foreground = [torch.nonzero(sl.label > 0) for sl in self.slices]
        self.inside = [torch.nonzero(sl.mask) for sl in self.slices]
        self.crop, self.rng = crop, rng

    def _one(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One random crop of one random slice."""
        i = int(self.rng.integers(len(self.slices)))
        sl = self.slices[i]
        use_foreground = self.rng.random() < POSITIVE_FRACTION and len(self.foreground[i]) > 0
        centres = self.foreground[i] if use_foreground else self.inside[i]
        cy, cx = centres[int(self.rng.integers(len(centres)))].tolist()
        h, w = sl.label.shape
        y0 = min(max(cy - self.crop // 2, 0), h - self.crop)
        x0 = min(max(cx - self.crop // 2, 0), w - self.crop)
        window = (slice(y0, y0 + self.crop), slice(x0, x0 + self.crop))
        return _random_flips(self.rng, sl.image[(slice(None), *window)], sl.label[window])

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` crops: images ``(B, C, crop, crop)`` and float labels ``(B, 1, crop, crop)``."""
        images, labels = zip(*(self._one() for _ in range(size)))
        return torch.stack(images), torch.stack(labels)[:, None].float()


class PatchSampler:
    """Class-balanced ``patch`` x ``patch`` patches for the patch CNN: a class drawn uniformly, then a pixel of that
    class inside the mask; the patch is cut from the zero-padded image (as the dense mode pads) and flipped."""

    def __init__(self, cases: Sequence[Case], patch: int, num_classes: int, rng: np.random.Generator) -> None:
        slices = [sl for case in cases for sl in case]
        half = patch // 2
        self.images = [F.pad(sl.image, [half] * 4) for sl in slices]
        self.pixels = []  # per class present: (N, 3) slice index, y, x
        for c in range(num_classes):
            found = [F.pad(torch.nonzero((sl.label == c) & sl.mask), (1, 0), value=i) for i, sl in enumerate(slices)]
            found = torch.cat(found)
            if len(found):
                self.pixels.append((c, found))
        self.patch, self.rng = patch, rng

    def _one(self) -> tuple[torch.Tensor, int]:
        """One patch centred on a pixel of a random class, and that class."""
        c, pixels = self.pixels[int(self.rng.integers(len(self.pixels)))]
        i, y, x = pixels[int(self.rng.integers(len(pixels)))].tolist()
        patch = self.images[i][:, y : y + self.patch, x : x + self.patch]
        return _random_flips(self.rng, patch)[0], c

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` patches ``(B, C, patch, patch)`` and their centre classes ``(B,)``."""
        patches, classes = zip(*(self._one() for _ in range(size)))
        return torch.stack(patches), torch.tensor(classes)


# ------------------------------------------------------------------------------------------- inference, Dice


def predict(network: nn.Module, image: torch.Tensor, pad_multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Logits ``(1, K, H, W)`` of one image ``(C, H, W)`` in one pass (patch CNN: dense mode), zero-padded at the
    far end to a multiple of ``pad_multiple`` and cropped back."""
    h, w = image.shape[1:]
    x = F.pad(image[None], [0, -w % pad_multiple, 0, -h % pad_multiple])
    logits = network.forward_dense(x) if isinstance(network, PatchCNN) else network(x)
    return logits[..., :h, :w]


def case_dice(pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, num_classes: int) -> float:
    """Mean Dice over the foreground classes of one case (arrays ``(H, W, S)``), counted inside ``mask``."""
    y_pred = one_hot(pred[None, None], num_classes) * mask
    y = one_hot(label[None, None], num_classes) * mask
    return float(torch.nanmean(compute_dice(y_pred, y, include_background=False)))


@torch.no_grad()
def evaluate(
    network: nn.Module, cases: Sequence[Case], num_classes: int, pad_multiple: int = PAD_MULTIPLE
) -> tuple[float, float]:
    """Mean Dice over the cases and mean seconds per 2D image (one pass each, batch 1, no_grad)."""
    network.eval()
    dices, seconds = [], []
    for case in cases:
        preds = []
        for sl in case:
            start = time.perf_counter()
            preds.append(predict(network, sl.image, pad_multiple).argmax(1)[0])
            seconds.append(time.perf_counter() - start)
        label, mask = torch.stack([sl.label for sl in case], -1), torch.stack([sl.mask for sl in case], -1)
        dices.append(case_dice(torch.stack(preds, -1), label, mask, num_classes))
    return float(np.mean(dices)), float(np.mean(seconds))


def evaluate_large(network: nn.Module, task: TaskData) -> tuple[bool, float]:
    """Whether the network runs on the larger images as they are (no padding), and its Dice on them (padded to a
    multiple of 16 where it does not)."""
    try:
        return True, evaluate(network, task.large, task.num_classes, pad_multiple=1)[0]
    except RuntimeError:
        return False, evaluate(network, task.large, task.num_classes)[0]


# ------------------------------------------------------------------------------------------------ training


def make_step(network: nn.Module, task: TaskData, cases: Sequence[Case], s: Settings) -> Callable[[], float]:
    """One optimisation step (sampling included) of the network on the cases; returns the loss."""
    rng = np.random.default_rng(s.seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    if isinstance(network, PatchCNN):
        sampler: CropSampler | PatchSampler = PatchSampler(cases, network.patch_size, task.num_classes, rng)
        loss_fn, batch_size = nn.CrossEntropyLoss(), s.patch_batch_size
    else:
        sampler = CropSampler(cases, task.crop, rng)
        loss_fn, batch_size = bundle_content(task_profile(task.name).name, "loss"), s.batch_size

    def step() -> float:
        x, y = sampler.batch(batch_size)
        network.train()
        optimizer.zero_grad()
        loss = loss_fn(network(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach().item()

    return step


def train(
    architecture: str,
    task: TaskData,
    cases: Sequence[Case],
    budget_s: float,
    eval_every_s: float,
    s: Settings,
    log: Callable[[str], None],
) -> Run:
    """Train a fresh network on the cases for ``budget_s`` seconds, evaluating on the test set every
    ``eval_every_s`` training seconds and at the end (evaluation time not counted)."""
    torch.manual_seed(s.seed)
    network = build_network(architecture, task.in_channels, task.num_classes)
    step = make_step(network, task, cases, s)
    run = Run(network, steps=0, trained_s=0.0)
    next_eval, loss = eval_every_s, float("nan")
    while run.trained_s < budget_s:
        start = time.perf_counter()
        loss = step()
        run.trained_s += time.perf_counter() - start
        run.steps += 1
        if run.trained_s >= next_eval or run.trained_s >= budget_s:
            dice, run.infer_s = evaluate(network, task.test, task.num_classes)
            run.curve.append((run.trained_s, dice))
            next_eval = eval_every_s * (math.floor(run.trained_s / eval_every_s) + 1)
            log(f"{run.trained_s:5.1f}/{budget_s:g} s trained, {run.steps} steps, loss {loss:.3f}, Dice {dice:.3f}")
    return run


def time_to_target(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """Training seconds at the first evaluation with Dice >= target, or None."""
    return next((t for t, dice in curve if dice >= target), None)


# -------------------------------------------------------------------------------------------------- driver


class Benchmark:
    """Runs every task x architecture and collects the rows of the three CSV files."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.start = time.perf_counter()
        self.results: list[dict[str, Any]] = []
        self.efficiency: list[dict[str, Any]] = []
        self.curves: list[dict[str, Any]] = []

    def log(self, message: str) -> None:
        """Print a progress line with the elapsed wall time."""
        elapsed = time.perf_counter() - self.start
        print(f"[{int(elapsed) // 60:3d}m{int(elapsed) % 60:02d}s] {message}", flush=True)

    def _record_curve(self, task: str, architecture: str, labelled: int, run: Run, kind: str) -> None:
        """Append a run's learning curve (``kind``: "main" or "subset") to the learning-curve rows."""
        for t, dice in run.curve:
            self.curves.append(
                {
                    "task": task,
                    "architecture": architecture,
                    "run": kind,
                    "labelled_images": labelled,
                    "train_s": round(t, 2),
                    "dice": round(dice, 4),
                }
            )

    def _efficiency_row(self, task: str, architecture: str, labelled: int, budget: float, run: Run) -> None:
        """Append a data-efficiency row: Dice at the end of the budget with ``labelled`` images."""
        self.efficiency.append(
            {
                "task": task,
                "architecture": architecture,
                "labelled_images": labelled,
                "budget_s": budget,
                "steps": run.steps,
                "dice": round(run.curve[-1][1], 4),
            }
        )

    def main_run(self, task: TaskData, architecture: str) -> Run:
        """Train on the whole pool with the full budget; measure Dice, time to target, inference, larger images."""
        s, n = self.s, len(task.train)
        prefix = f"{task.name}/{architecture} all {n} images:"
        run = train(architecture, task, task.train, s.budget_s, s.eval_every_s, s, lambda m: self.log(f"{prefix} {m}"))
        accepts, large_dice = evaluate_large(run.network, task)
        self.log(f"{prefix} larger images {'accepted as is' if accepts else 'need padding'}, Dice {large_dice:.3f}")
        best_t, best = max(run.curve, key=lambda p: p[1])
        reached = time_to_target(run.curve, task.target)
        self.results.append(
            {
                "task": task.name,
                "architecture": architecture,
                "parameters": count_parameters(run.network),
                "train_images": n,
                "budget_s": s.budget_s,
                "steps": run.steps,
                "dice": round(run.curve[-1][1], 4),
                "best_dice": round(best, 4),
                "best_at_s": round(best_t, 1),
                "target_dice": task.target,
                "s_to_target": "not reached" if reached is None else round(reached, 1),
                "infer_s_per_image": round(run.infer_s, 4),
                "large_accepted_as_is": accepts,
                "large_dice": round(large_dice, 4),
            }
        )
        self._record_curve(task.name, architecture, n, run, "main")
        return run

    def efficiency_runs(self, task: TaskData, architecture: str, main: Run) -> None:
        """Train on nested subsets of ``label_counts`` images (the whole pool reuses the main run when the budgets
        are equal); Dice at the end of the budget."""
        s = self.s
        budget = s.small_budget_s if s.small_budget_s is not None else s.budget_s
        order = np.random.default_rng(s.seed).permutation(len(task.train))
        for count in sorted(s.label_counts):
            if count == len(task.train) and budget == s.budget_s:
                self._efficiency_row(task.name, architecture, count, budget, main)
                continue
            cases = [task.train[i] for i in order[:count]]
            prefix = f"{task.name}/{architecture} {count} images:"
            run = train(architecture, task, cases, budget, math.inf, s, lambda m, p=prefix: self.log(f"{p} {m}"))
            self._efficiency_row(task.name, architecture, count, budget, run)
            self._record_curve(task.name, architecture, count, run, "subset")

    def run_task(self, task: TaskData) -> None:
        """All architectures on one task."""
        for architecture in self.s.architectures:
            main = self.main_run(task, architecture)
            self.efficiency_runs(task, architecture, main)


# -------------------------------------------------------------------------------------------------- outputs


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows (dicts with the same keys) as CSV."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def _fmt_s(value: Any) -> str:
    """Seconds as text with one decimal, or the value as it is (e.g. "not reached")."""
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def results_markdown(bench: Benchmark, tasks: dict[str, TaskData], wall_s: float) -> str:
    """The Markdown report: settings, one table per task, the data-efficiency table and the definitions."""
    s = bench.s
    small = s.small_budget_s if s.small_budget_s is not None else s.budget_s
    lines = [
        "# Architecture benchmark",
        "",
        f"`benchmarks/architectures.py`; {s.threads} torch threads on {platform.machine()} "
        f"({platform.processor() or 'CPU'}), torch {torch.__version__}; training budget {s.budget_s:g} s per main "
        f"run, {small:g} s per data-efficiency run, held-out Dice every {s.eval_every_s:g} training s; "
        f"seed {s.seed}; total wall time {wall_s / 60:.1f} min.",
    ]
    header = [
        "architecture",
        "parameters",
        "steps",
        "Dice (end)",
        "best Dice (at s)",
        "s to target",
        "inference s / image",
        "larger images accepted as is",
        "Dice on larger images",
    ]
    for name, task in tasks.items():
        rows = [r for r in bench.results if r["task"] == name]
        lines += [
            "",
            f"## {name}: {len(task.train)} training images, {len(task.test)} test images, "
            f"target Dice {task.target:g}; larger: {task.large_note}",
            "",
        ]
        lines += _md_table(
            header,
            (
                [
                    r["architecture"],
                    f"{r['parameters']:,}",
                    r["steps"],
                    f"{r['dice']:.3f}",
                    f"{r['best_dice']:.3f} ({r['best_at_s']:.0f})",
                    _fmt_s(r["s_to_target"]),
                    f"{r['infer_s_per_image']:.3f}",
                    "yes" if r["large_accepted_as_is"] else "no (padded)",
                    f"{r['large_dice']:.3f}",
                ]
                for r in rows
            ),
        )
    counts = sorted({r["labelled_images"] for r in bench.efficiency})
    lines += ["", f"## Data efficiency: held-out Dice after {small:g} s of training with N labelled images", ""]
    table = {(r["task"], r["architecture"], r["labelled_images"]): r["dice"] for r in bench.efficiency}
    keys = list(dict.fromkeys((r["task"], r["architecture"]) for r in bench.efficiency))
    lines += _md_table(
        ["task", "architecture", *[f"N={c}" for c in counts]],
        ([t, a, *[f"{table[t, a, c]:.3f}" if (t, a, c) in table else "" for c in counts]] for t, a in keys),
    )
    lines += ["", "## Definitions", "", *[f"- {d}" for d in DEFINITIONS]]
    return "\n".join(lines) + "\n"


DEFINITIONS = [
    "An image is one photograph (retinal) or one frame, one subject's ED or ES stack (cardiac); cardiac networks "
    "see its slices as 2D images. Dice: retinal vessel class inside the FOV per photograph; cardiac mean of RV, "
    "myocardium and LV per frame; averaged over the test images.",
    "Dice (end): the network at the end of the budget, used for every other column too. Best Dice: the highest "
    "held-out Dice seen at the evaluations during training (selected on the test set, so optimistic).",
    "s to target: training seconds (sampling included, evaluation excluded) at the first evaluation reaching the "
    "target Dice; its resolution is the evaluation interval.",
    "Inference: seconds per 2D image (photograph or slice), whole image, batch 1, no_grad, mean over the test set.",
    "Larger images accepted as is: the network runs on them without padding; the Dice is then on them as they are, "
    "else padded at the far end to a multiple of 16 (as for the regular test images). The U-Net needs each side "
    "divisible by the product of its strides (8): 'no' means the raw sizes are not multiples of 8, not that large "
    "images are refused; padded, it segments them like any other.",
    "Steps: optimiser steps in the budget (dense networks: crops per step = batch_size; patch CNN: "
    "patch_batch_size patches). Wall-clock budgets on a shared CPU: timings vary with the machine's load.",
]


def _series(rows: Iterable[dict[str, Any]], task: str, x: str) -> dict[str, list[tuple[float, float]]]:
    """Per architecture, the (x, Dice) points of one task's rows, sorted by x."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["task"] == task:
            series.setdefault(r["architecture"], []).append((float(r[x]), float(r["dice"])))
    return {name: sorted(points) for name, points in series.items()}


def write_outputs(output_dir: Path, bench: Benchmark, tasks: dict[str, TaskData]) -> None:
    """Write the CSV files, the Markdown report and the two charts."""
    write_csv(output_dir / "results.csv", bench.results)
    write_csv(output_dir / "data_efficiency.csv", bench.efficiency)
    write_csv(output_dir / "learning_curves.csv", bench.curves)
    wall_s = time.perf_counter() - bench.start
    (output_dir / "results.md").write_text(results_markdown(bench, tasks, wall_s))
    main_curves = [r for r in bench.curves if r["run"] == "main"]
    draw_charts(
        output_dir / "learning_curves.png",
        {f"{t}: held-out Dice while training": _series(main_curves, t, "train_s") for t in tasks},
        "training seconds",
        COLOURS,
    )
    draw_charts(
        output_dir / "data_efficiency.png",
        {f"{t}: Dice vs labelled images": _series(bench.efficiency, t, "labelled_images") for t in tasks},
        "labelled images",
        COLOURS,
        log2=True,
    )


# ----------------------------------------------------------------------------------------------------- main


def make_settings(quick: bool = False, **overrides: Any) -> Settings:
    """Settings from the defaults, the quick preset and the command-line overrides, checked."""
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown settings {unknown}; valid: {sorted(names)}")
    s = Settings(**{**(QUICK if quick else {}), **overrides})
    s.tasks, s.architectures = as_tuple(s.tasks, str), as_tuple(s.architectures, str)
    s.label_counts = as_tuple(s.label_counts, int)
    for values, valid, what in ((s.tasks, TASK_DATA, "task"), (s.architectures, NETWORK_CONFIGS, "architecture")):
        for v in values:
            if v not in valid:
                raise ValueError(f"unknown {what} {v!r}; valid: {sorted(valid)}")
    pools = {"retinal": s.retinal_train, "cardiac": 2 * s.cardiac_train_subjects}
    for task in s.tasks:
        if max(s.label_counts) > pools[task] or min(s.label_counts) < 1:
            raise ValueError(f"label_counts {s.label_counts} must lie in 1..{pools[task]}, the {task} training pool")
    return s


def load_task(name: str, s: Settings, data_dir: Path) -> TaskData:
    """Generate and load one task's data."""
    return TASK_DATA[name](s, data_dir)


def main(output_dir: str, quick: bool = False, **settings: Any) -> str:
    """Run the benchmark (``--quick``: tiny smoke-test settings) and write its outputs into ``output_dir``."""
    s = make_settings(quick, **settings)
    torch.set_num_threads(s.threads)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    bench = Benchmark(s)
    bench.log(f"settings: {dataclasses.asdict(s)}")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(s.data_dir or tmp)
        tasks = {}
        for name in s.tasks:
            tasks[name] = load_task(name, s, data_dir)
            t = tasks[name]
            bench.log(f"{name}: {len(t.train)} training, {len(t.test)} test, {len(t.large)} larger images loaded")
            bench.run_task(t)
    write_outputs(out, bench, tasks)
    bench.log(f"wrote {out}/results.md")
    print((out / "results.md").read_text(), flush=True)
    return str(out)


if __name__ == "__main__":
    fire.Fire(main)
