"""Against the peers: each bundle and nnU-Net v2 trained for the same wall-clock budget on the same cases, both
scored with the same code on the same test cases in the input grid.

For every bundle (every folder of ``bundles/`` with a ``tooling.json``, or those of ``--bundles``) and its data set
(``--dataset_dir {bundle or task: folder holding dataset.json}``, any ``dataset.json`` data set with a labelled
``test`` list; otherwise the synthetic data of the bundle's demo, written by its task's generator):

- **nnU-Net v2** (``benchmarks/nnunet_budget.py``): the data set converted to nnU-Net's raw format, fingerprinted with
  its integrity check, planned and preprocessed; the configuration matching the bundle (``2d`` for a 2D network,
  ``3d_fullres`` for a 3D one) trained, fold 0 of its 5-fold split, with its default trainer stopped at the budget
  (its poly learning-rate schedule fitted to the epochs the budget holds); the test cases predicted with its own
  predictor (Gaussian windows, half overlap, mirroring).
- **The bundle**: its own ``train.json`` (validation, best-model saving, its caching and loader workers) with
  ``ignite.handlers.TimeLimit`` stopping it at the budget and its epochs (and cosine schedule) fitted to the budget
  as nnU-Net's are; the best model (the last weights where no validation ran
  in the budget) segments the test images with ``inference.json``, as a user runs it.

The budget is wall-clock training time from the first iteration, validation included; set-up (nnU-Net's planning
and preprocessing, the bundle's dataset caching) is reported beside it. Both run with the same torch threads and the
same number of data-loading processes (the bundle's ``num_workers``, nnU-Net's ``nnUNet_n_proc_DA``), one after the
other, each arm in its own process. Scores, from the written label files: Dice and HD95 (mm) per class with the
bundle's own class definitions (liver: liver and tumour together; retinal: inside the field-of-view mask), and for
lesion tasks (liver tumours, lung nodules) lesion-wise sensitivity and false positives per scan.

Command line (``--quick``: the retinal bundle on its small quick data set, seconds of training, for CI)::

    python benchmarks/peers.py --output_dir OUT [--quick] [--bundles retinal,cardiac] [--budget_s 1200]
        [--dataset_dir "{retinal: DIR}"] [--threads 2] [--workers 2]

Writes ``results.csv`` (one row per bundle and system), ``per_case.csv``, ``curves.csv`` (validation Dice against
training seconds: the bundle's validation on whole images, nnU-Net's pseudo Dice on patches), ``results.md`` and
``curves.png`` into ``output_dir``. nnU-Net is optional: ``pip install -e ".[peers]"``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/architectures.py

import classical_methods as cm
import fire
import nnunet_budget as nb
import numpy as np
from bundle_training import train_for
from charts import draw_charts
from options import as_mapping, as_tuple

import synthetic
from common.profile import BundleProfile, bundle_names, describe
from common.tables import write_csv_atomic

SYSTEMS = ("bundle", "nnunet")
COLOURS = {"bundle": "#1f77b4", "nnunet": "#d62728"}
#: task -> the class index scored lesion-wise (components)
LESION_CLASS = {"liver": 2, "lung": 1}
DATASET_ID_BASE = 900  # nnU-Net data set ids 901.. in the benchmark's own nnUNet_raw


@dataclass
class Settings:
    """Everything a run depends on; each field is a command-line option."""

    bundles: tuple[str, ...] = field(default_factory=lambda: tuple(bundle_names()))  # bundle or task names
    budget_s: float = 1200.0  # training wall-clock seconds per system and bundle
    budgets: dict[str, float] = field(default_factory=dict)  # {bundle or task: seconds} replacing budget_s
    threads: int = 2  # torch threads of both systems
    workers: int = 2  # data-loading processes of both (num_workers; nnUNet_n_proc_DA)
    dataset_dir: dict[str, str] = field(default_factory=dict)  # {bundle or task: folder with dataset.json}
    data_dir: str | None = None  # where synthetic data sets are written (kept); default OUT/<bundle>/data
    seed: int = 0
    #: nnU-Net's epoch is 250 iterations, most of the budget on a CPU; shorter epochs give a learning curve and
    #: let the fitted schedule decay (the number of optimiser steps in the budget is the same)
    nnunet_iterations_per_epoch: int = 50
    nnunet_val_iterations: int = 10
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # {bundle or task: {config id: value}}
    quick: bool = False


QUICK = {"bundles": ("retinal_vessel_unet",), "budget_s": 8.0, "nnunet_iterations_per_epoch": 4,
         "nnunet_val_iterations": 2, "quick": True}  # fmt: skip


def make_settings(quick: bool = False, **options: Any) -> Settings:
    """Settings from the command line (``--quick`` first sets the quick values)."""
    values = {**(QUICK if quick else {}), **options}
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; the options are {sorted(names)}")
    if isinstance(values.get("bundles"), str):
        values["bundles"] = as_tuple(values["bundles"])
    for name in ("budgets", "dataset_dir", "overrides"):
        if name in values:
            values[name] = as_mapping(values[name], name)
    return Settings(**values)


def resolve(bundles: tuple[str, ...]) -> list[BundleProfile]:
    """Profiles of the named bundles (bundle names or task names)."""
    profiles = {n: describe(n) for n in bundle_names()}
    chosen = []
    for name in bundles:
        match = [p for n, p in profiles.items() if name in (n, p.task)]
        if not match:
            raise ValueError(f"no bundle or task named {name!r}; the bundles are {sorted(profiles)}")
        chosen.append(match[0])
    return chosen


def per_bundle(mapping: dict[str, Any], p: BundleProfile, default: Any = None) -> Any:
    """The value of ``mapping`` for a bundle given by name or task."""
    return mapping.get(p.name, mapping.get(p.task, default))


# ---------------------------------------------------------------------------------------------------- the arms


def peak_memory_mb() -> float:
    """Peak resident memory of this process and its finished children, MB (``ru_maxrss``, kB on Linux)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def _in_child(function: str, kwargs: dict[str, Any], result: Path) -> None:
    """Run ``function(**kwargs)`` of this module and write its result and the peak memory as JSON."""
    import torch

    torch.set_num_threads(int(kwargs.pop("threads")))
    out = globals()[function](**kwargs)
    out["peak_memory_mb"] = round(peak_memory_mb(), 1)
    result.write_text(json.dumps(out))


def run_child(function: str, result: Path, **kwargs: Any) -> dict[str, Any]:
    """Run one step in a fresh process (its own threads, imports and peak memory); its result, or raise."""
    process = multiprocessing.get_context("spawn").Process(target=_in_child, args=(function, kwargs, result))
    process.start()
    process.join()
    if process.exitcode != 0 or not result.is_file():
        raise RuntimeError(f"{function} failed (exit status {process.exitcode}); its output is above")
    return json.loads(result.read_text())


def nnunet_train(work: str, dataset: str, dataset_id: int, name: str, configuration: str, budget_s: float,
                 workers: int, iterations_per_epoch: int, val_iterations: int, bundle: str) -> dict[str, Any]:
    """nnU-Net arm, training: convert, plan and preprocess (timed), train for the budget."""
    nb.set_paths(work)
    os.environ["nnUNet_n_proc_DA"] = str(workers)
    p = describe(bundle)
    index = json.loads((Path(dataset) / "dataset.json").read_text())
    start = time.perf_counter()
    nb.convert(dataset, os.environ["nnUNet_raw"], dataset_id, name, p.channels, p.classes, index["training"],
               index["test"])  # fmt: skip
    plans = nb.plan_and_preprocess(dataset_id, configuration, processes=max(1, workers))
    setup_s = time.perf_counter() - start
    out = nb.train(dataset_id, configuration, budget_s, iterations_per_epoch, val_iterations)
    return {**out, "setup_s": setup_s, "plans_spacing": plans["configurations"][configuration]["spacing"]}


def nnunet_predict(work: str, dataset_id: int, checkpoint: str, cases: dict[str, list[str]], output_dir: str,
                   ) -> dict[str, Any]:  # fmt: skip
    """nnU-Net arm, inference: the test cases with its predictor, timed from loading the weights."""
    nb.set_paths(work)
    start = time.perf_counter()
    written = nb.predict(dataset_id, checkpoint, cases, output_dir)
    return {"seconds": time.perf_counter() - start, "files": {k: str(v) for k, v in written.items()}}


def bundle_train(bundle: str, dataset: str, work: str, budget_s: float, workers: int,
                 overrides: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Bundle arm, training: ``train.json`` as shipped, stopped at the budget (``bundle_training.train_for``)."""
    values = {"dataset_dir": dataset, "output_dir": str(Path(work) / "train"),
              "ckpt_path": str(Path(work) / "models" / "model.pt"), "num_workers": workers, **overrides}  # fmt: skip
    return train_for(describe(bundle).root, values, budget_s, fit_schedule=True)


def bundle_predict(bundle: str, input_dir: str, output_dir: str, checkpoint: str, workers: int,
                   overrides: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Bundle arm, inference: ``inference.json`` run as ``monai.bundle run`` runs it, timed from parsing."""
    from monai.bundle import run

    p = describe(bundle)
    start = time.perf_counter()
    run(config_file=str(p.config("inference.json")), bundle_root=str(p.root), input_dir=input_dir,
        output_dir=output_dir, ckpt_path=checkpoint, num_workers=workers, **overrides)  # fmt: skip
    return {"seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------------- scoring


def read_labels(path: str | Path, binary: bool) -> tuple[np.ndarray, tuple[float, ...]]:
    """A label map (integers; 0/1 for a binary task whatever the stored values) and its voxel sizes in mm."""
    path = Path(path)
    if path.suffix.lower() in (".png", ".gif", ".bmp", ".tif", ".tiff"):
        from PIL import Image

        array = np.asarray(Image.open(path).convert("L")).astype(np.int16)
        spacing: tuple[float, ...] = (1.0, 1.0)
    else:
        import nibabel as nib

        image = nib.load(path)
        array = np.rint(np.asarray(image.dataobj)).astype(np.int16)
        spacing = tuple(float(z) for z in image.header.get_zooms()[: array.ndim])
    return ((array > 0).astype(np.int16) if binary else array), spacing


def hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th-percentile Hausdorff distance (mm) of two binary masks; NaN when either is empty."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    if not (pred.any() and truth.any()):
        return math.nan
    p, t = (torch.as_tensor(np.stack([~m, m])[None]) for m in (pred, truth))
    return float(compute_hausdorff_distance(p, t, include_background=False, percentile=95, spacing=list(spacing))[0, 0])


def score_case(task: str, pred: np.ndarray, label: np.ndarray, spacing: tuple[float, ...],
               mask: np.ndarray | None) -> dict[str, float]:  # fmt: skip
    """Dice and HD95 per class (the bundle's class definitions) and, for lesion tasks, lesion detection."""
    from common.metrics.lesions import match_lesions

    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the label's {label.shape}")
    scores: dict[str, float] = {}
    for name, index in cm.CLASSES[task].items():
        p, t = cm.truth_mask(task, pred, index), cm.truth_mask(task, label, index)
        if mask is not None:
            p, t = p & mask, t & mask
        no_tumour = task == "liver" and name == "tumour" and not t.any()
        undefined = no_tumour or (task == "lung" and not (p.any() or t.any()))  # as the bundles' evaluations
        scores[f"dice_{name}"] = math.nan if undefined else cm.dice(p, t)
        scores[f"hd95_{name}_mm"] = hd95_mm(p, t, spacing)
    if task in LESION_CLASS:
        found = match_lesions(pred == LESION_CLASS[task], label == LESION_CLASS[task])
        scores.update(true_lesions=found["true_lesions"], detected=found["detected"],
                      false_positives=found["false_positives"])  # fmt: skip
    return scores


def ours_file(folder: Path, case: str) -> Path:
    """The bundle's segmentation of ``case`` in ``folder`` (``<case>_seg.<ext>``)."""
    found = sorted(folder.glob(f"{case}_seg.*"))
    if not found:
        raise FileNotFoundError(f"{folder}: no segmentation {case}_seg.* written by the bundle")
    return found[0]


# ---------------------------------------------------------------------------------------------------- one bundle


def prepare_data(p: BundleProfile, s: Settings, out: Path) -> Path:
    """The bundle's data set: ``--dataset_dir``'s, or its demo's synthetic data (quick: its quick data)."""
    given = per_bundle(s.dataset_dir, p)
    if given:
        return Path(given).resolve()
    root = (Path(s.data_dir) / p.name if s.data_dir else out / p.name / "data").resolve()
    if not (root / "dataset.json").is_file():
        options = dict((p.quick if s.quick else p.demo)["data"])
        options["seed"] = s.seed
        print(f"[{p.name}] writing synthetic data {options} to {root}", flush=True)
        synthetic.write_dataset(p.task, root, **options)
    return root


def bundle_overrides(p: BundleProfile, s: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training overrides, overrides of every step): quick mode's from ``tooling.json``, then ``--overrides``."""
    common = dict(p.quick.get("overrides", {})) if s.quick else {}
    common.update(per_bundle(s.overrides, p, {}))
    common.pop("num_workers", None)  # both systems get --workers
    train = {k: v for k, v in p.quick["train"].items() if k != "max_epochs"} if s.quick else {}
    return {**train, **common}, common


def run_bundle_arms(p: BundleProfile, s: Settings, out: Path, index: int) -> dict[str, Any]:
    """Both systems on one bundle's data: trained, predicted, scored; returns rows and curves."""
    work = out / p.name
    work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(p, s, out)
    entries = json.loads((data / "dataset.json").read_text())
    test = entries.get("test") or []
    if not test or any("label" not in e for e in test):
        raise ValueError(f"{data / 'dataset.json'}: the benchmark needs a 'test' list with labels")
    budget = float(per_bundle(s.budgets, p, s.budget_s))
    configuration = "3d_fullres" if p.network_dims == 3 else "2d"
    dataset_id = DATASET_ID_BASE + index + 1
    train_over, common_over = bundle_overrides(p, s)
    runs: dict[str, dict[str, Any]] = {}

    print(f"[{p.name}] nnU-Net v2 ({configuration}): plan, preprocess, train {budget:.0f} s", flush=True)
    nn_work = work / "nnunet"
    trained = run_child("nnunet_train", work / "nnunet_train.json", threads=s.threads, work=str(nn_work),
                        dataset=str(data), dataset_id=dataset_id, name=p.task, configuration=configuration,
                        budget_s=budget, workers=s.workers, iterations_per_epoch=s.nnunet_iterations_per_epoch,
                        val_iterations=s.nnunet_val_iterations, bundle=p.name)  # fmt: skip
    raw_images = next((nn_work / "raw").glob(f"Dataset{dataset_id:03d}_*")) / "imagesTs"
    cases = {nb.case_name(e): [str(f) for f in sorted(raw_images.glob(f"{nb.case_name(e)}_[0-9][0-9][0-9][0-9]*"))]
             for e in test}  # fmt: skip
    predicted = run_child("nnunet_predict", work / "nnunet_predict.json", threads=s.threads, work=str(nn_work),
                          dataset_id=dataset_id, checkpoint=trained["checkpoint"], cases=cases,
                          output_dir=str(work / "nnunet_pred"))  # fmt: skip
    runs["nnunet"] = {"train": trained, "predict": predicted,
                      "files": {c: Path(f) for c, f in predicted["files"].items()}}  # fmt: skip

    print(f"[{p.name}] bundle: train.json for {budget:.0f} s", flush=True)
    shutil.rmtree(work / "bundle", ignore_errors=True)  # no model of an earlier run taken for this one's
    trained = run_child("bundle_train", work / "bundle_train.json", threads=s.threads, bundle=p.name,
                        dataset=str(data), work=str(work / "bundle"), budget_s=budget, workers=s.workers,
                        overrides=train_over)  # fmt: skip
    inputs = work / "test_images"
    inputs.mkdir(exist_ok=True)
    for entry in test:
        for image in nb.image_files(entry):
            target = inputs / Path(image).name
            if not target.exists():
                target.symlink_to((data / image).resolve())
    predicted = run_child("bundle_predict", work / "bundle_predict.json", threads=s.threads, bundle=p.name,
                          input_dir=str(inputs), output_dir=str(work / "bundle_pred"),
                          checkpoint=trained["checkpoint"], workers=s.workers, overrides=common_over)  # fmt: skip
    runs["bundle"] = {"train": trained, "predict": predicted,
                      "files": {nb.case_name(e): ours_file(work / "bundle_pred", nb.case_name(e)) for e in test}}

    per_case = []
    binary = len(p.classes) == 2
    for entry in test:
        case = nb.case_name(entry)
        label, spacing = read_labels(data / entry["label"], binary)
        mask = read_labels(data / entry["mask"], True)[0].astype(bool) if entry.get("mask") else None
        for system in SYSTEMS:
            pred, _ = read_labels(runs[system]["files"][case], binary)
            per_case.append({"bundle": p.name, "system": system, "case": case,
                             **score_case(p.task, pred, label, spacing, mask)})  # fmt: skip
    summary = [summarise(p, system, runs[system], [r for r in per_case if r["system"] == system], budget,
                         configuration, len(test)) for system in SYSTEMS]  # fmt: skip
    curves = [{"bundle": p.name, "system": system, "seconds": round(t, 2), "dice": round(d, 4)}
              for system in SYSTEMS for t, d in runs[system]["train"]["curve"]]  # fmt: skip
    return {"summary": summary, "per_case": per_case, "curves": curves}


def _mean(values: list[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else math.nan


def summarise(p: BundleProfile, system: str, run: dict[str, Any], rows: list[dict[str, Any]], budget: float,
              configuration: str, cases: int) -> dict[str, Any]:  # fmt: skip
    """One ``results.csv`` row: mean scores over the test cases, time and memory."""
    trained, predicted = run["train"], run["predict"]
    row: dict[str, Any] = {"bundle": p.name, "task": p.task, "system": system,
                           "configuration": configuration if system == "nnunet" else "train.json",
                           "budget_s": budget, "test_cases": cases}  # fmt: skip
    for name in cm.CLASSES[p.task]:
        row[f"dice_{name}"] = _mean([r[f"dice_{name}"] for r in rows])
        row[f"hd95_{name}_mm"] = _mean([r[f"hd95_{name}_mm"] for r in rows])
    if p.task in LESION_CLASS:
        true = sum(r["true_lesions"] for r in rows)
        row["lesion_sensitivity"] = round(sum(r["detected"] for r in rows) / true, 4) if true else math.nan
        row["false_positives_per_scan"] = round(sum(r["false_positives"] for r in rows) / len(rows), 3)
    row.update({
        "train_s": round(trained["train_seconds"], 1), "setup_s": round(trained["setup_s"], 1),
        "epochs": trained["epochs"], "iterations": trained["iterations"],
        "best_val_dice": _mean([max((d for _, d in trained["curve"]), default=math.nan)]),
        "inference_s_per_case": round(predicted["seconds"] / cases, 2),
        "train_peak_mb": trained["peak_memory_mb"], "inference_peak_mb": predicted["peak_memory_mb"],
    })  # fmt: skip
    return row


# ---------------------------------------------------------------------------------------------------- report


def _fmt(value: Any) -> str:
    """A table cell: floats to 3 decimals, NaN as '-'."""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def write_report(out: Path, s: Settings, summary: list[dict[str, Any]], wall_s: float) -> None:
    """``results.md``: one table per bundle, the settings and definitions."""
    import torch

    lines = ["# Bundles against nnU-Net v2 at the same training budget", "",
             f"`benchmarks/peers.py`; {s.threads} torch threads and {s.workers} data-loading processes per system on "
             f"{platform.machine()} (CPU), torch {torch.__version__}, nnU-Net v2 {_nnunet_version()}; seed {s.seed}; "
             f"total wall time {wall_s / 60:.1f} min.", ""]  # fmt: skip
    for bundle in dict.fromkeys(r["bundle"] for r in summary):
        rows = [r for r in summary if r["bundle"] == bundle]
        skip = {"bundle", "task", "budget_s", "test_cases"}
        header = [k for k in rows[0] if k not in skip]
        lines += [f"## {bundle} ({rows[0]['task']}): {rows[0]['budget_s']:.0f} s of training each, "
                  f"{rows[0]['test_cases']} test cases", "",
                  "| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]  # fmt: skip
        lines += ["| " + " | ".join(_fmt(r[k]) for k in header) + " |" for r in rows]
        lines.append("")
    lines += ["## Definitions", "", *[f"- {d}" for d in DEFINITIONS], ""]
    (out / "results.md").write_text("\n".join(lines))


DEFINITIONS = [
    "Dice per class with the bundle's definitions (liver: liver and tumour together; retinal: inside the "
    "field-of-view mask), mean over the test cases; HD95 in mm (NaN where either mask is empty, left out of the mean).",
    "Lesion sensitivity: true lesions (connected components) overlapped by a prediction, over all test cases; "
    "false positives per scan: predicted components overlapping no true lesion.",
    "train_s: training wall time from the first iteration, validation included (the budget, overrun by at most one "
    "iteration and nnU-Net's last validation); setup_s: nnU-Net's conversion, fingerprint, planning and "
    "preprocessing, or the bundle's dataset caching.",
    "best_val_dice: the best validation Dice seen (the bundle: whole validation images; nnU-Net: its pseudo Dice "
    "on validation patches, not comparable across systems).",
    "inference_s_per_case: seconds from loading the weights to the last segmentation written, over the test cases "
    "(nnU-Net: with its default mirroring test-time augmentation). Peak memory: resident set of the process (MB).",
    "nnU-Net trains fold 0 of its 5-fold split (80 % of the training cases), the bundle its own 80 % split "
    "(val_fraction); both predict with the weights they would ship (nnU-Net: final; the bundle: best validation).",
]


def _nnunet_version() -> str:
    """The installed nnU-Net v2 version."""
    from importlib.metadata import version

    return version("nnunetv2")


def main(output_dir: str, quick: bool = False, **options: Any) -> str:
    """Run the benchmark; returns the path of ``results.md``."""
    s = make_settings(quick=quick, **options)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    summary, per_case, curves = [], [], []
    for index, p in enumerate(resolve(s.bundles)):
        try:
            result = run_bundle_arms(p, s, out, index)
        except Exception:  # one bundle's failure is reported, the others still run
            traceback.print_exc()
            print(f"[{p.name}] failed; see above", flush=True)
            continue
        summary += result["summary"]
        per_case += result["per_case"]
        curves += result["curves"]
        write_csv_atomic(out / "results.csv", summary)
        write_csv_atomic(out / "per_case.csv", per_case)
        write_csv_atomic(out / "curves.csv", curves)
    if not summary:
        raise RuntimeError("no bundle finished; see the errors above")
    panels = {b: {sys_: [(c["seconds"], c["dice"]) for c in curves if (c["bundle"], c["system"]) == (b, sys_)]
                  for sys_ in SYSTEMS} for b in dict.fromkeys(c["bundle"] for c in curves)}  # fmt: skip
    draw_charts(out / "curves.png", panels, "training seconds (validation Dice: see results.md)", COLOURS)
    write_report(out, s, summary, time.time() - start)
    print((out / "results.md").read_text(), flush=True)
    return str(out / "results.md")


if __name__ == "__main__":
    fire.Fire(main)
