"""Classical baselines against the trained bundles: threshold, region growing and edge-based segmentation
(``benchmarks/classical_methods.py``) and each bundle's network, on the same held-out synthetic test cases.

For every task that has classical methods (``classical_methods.CLASSES``: ``retinal``, ``cardiac``, ``liver``,
``lung``, ``brain``), with the bundle whose ``tooling.json`` names that task (``common.profile``; a bundle whose task
has no classical method is not benchmarked):

1. the task's synthetic data set is written with its generator (``python -m synthetic TASK``,
   ``synthetic.write_dataset``) into ``OUT/<task>/data`` (sizes: ``--data``), unless ``--data_dir`` names a folder
   for the task (any Decathlon-style ``dataset.json`` with ``training`` and ``test`` lists, e.g. a user's own data
   prepared with the bundle's ``prepare_*.py``);
2. a checkpoint is taken from ``--ckpt`` (``{task: path}``) or ``--ckpt_dir`` (``<dir>/<task>/models/model.pt``),
   otherwise the bundle is trained with its own ``train.json`` (``common.runner.run_bundle``, exactly as users
   type it) for the task's number of epochs (``--epochs``);
3. the bundle's ``evaluate.json`` runs on the ``test`` split as users run it, and its per-case ``metrics.csv`` gives
   the network's Dice per class;
4. the three classical methods are tuned on the ``training`` split's labelled images only and run on the same test
   cases, each in its own grid; Dice uses the bundle's definition (retinal: inside the field of view; liver: the
   liver class is labels 1 and 2, the tumour Dice is undefined for a case without tumour; lung: undefined when
   neither truth nor prediction has a nodule; otherwise a class absent from both counts 1). Undefined Dice values
   are left out of the means.

Region growing gets one simulated click per structure and case, at the deepest point of the true structure's
largest component: information from the test labels that no other method, and no network, gets.

Command line (``--quick``: tiny data, one epoch, a smoke test)::

    python benchmarks/classical.py --output_dir OUT [--quick] [--tasks retinal,cardiac] [--epochs "{liver: 40}"]
        [--ckpt_dir RUNS] [--ckpt "{retinal: path/model.pt}"] [--data_dir "{liver: my_liver_data}"]

Writes ``results.csv``, ``per_case.csv``, ``results.md`` and ``dice.png`` into ``output_dir``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import inspect
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see architectures.py: spinning OpenMP threads on shared cores

import classical_methods as cm
import fire
import numpy as np
from options import as_mapping, as_tuple
from PIL import Image, ImageDraw, ImageFont

import synthetic
from common.profile import BundleProfile, bundle_names, describe
from common.runner import run_bundle
from common.tables import write_csv_atomic


def task_profiles() -> dict[str, BundleProfile]:
    """Task -> the profile of the bundle doing it, for the tasks that have classical methods, in
    ``classical_methods.CLASSES`` order (the first bundle by name where several share a task)."""
    found: dict[str, BundleProfile] = {}
    for name in bundle_names():
        p = describe(name)
        found.setdefault(p.task, p)
    return {task: found[task] for task in cm.CLASSES if task in found}


#: task -> the profile of its bundle (only tasks with classical methods)
TASK_PROFILES = task_profiles()
#: task -> bundle name
TASK_BUNDLES = {task: p.name for task, p in TASK_PROFILES.items()}


@functools.cache
def metric_columns(task: str) -> dict[str, str]:
    """Class name -> the column of the bundle's per-case ``metrics.csv`` holding its Dice (the profile's
    ``dice_keys`` by the class's label index)."""
    keys = TASK_PROFILES[task].dice_keys
    return {name: keys[index] for name, index in cm.CLASSES[task].items()}


NETWORK = "network"
METHODS = (NETWORK, *cm.METHODS)
COLOURS = {NETWORK: "#1f77b4", "threshold": "#ff7f0e", "region_growing": "#2ca02c", "edge": "#d62728"}


@dataclass
class Settings:
    """Everything a run depends on; each field is a command-line option."""

    tasks: tuple[str, ...] = tuple(TASK_BUNDLES)
    #: training epochs per task (sized for about 3-4 minutes per bundle on 2 CPU cores)
    epochs: dict[str, int] = field(
        default_factory=lambda: {"retinal": 200, "cardiac": 15, "liver": 25, "lung": 20, "brain": 40}
    )
    #: synthetic.write_dataset arguments per task (sized like the full demos; options a generator lacks are dropped)
    data: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "retinal": {"num_train": 24, "num_test": 6, "size": 320},
            "cardiac": {"num_train": 16, "num_test": 4},
            "liver": {"num_train": 16, "num_test": 4, "size": 160},
            "lung": {"num_train": 16, "num_test": 4, "size": 160},
            "brain": {"num_train": 12, "num_test": 3},
        }
    )
    #: extra bundle overrides per task, given to training and evaluation alike
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    num_workers: int = 2
    data_dir: dict[str, str] = field(default_factory=dict)  # task -> existing dataset folder
    ckpt: dict[str, str] = field(default_factory=dict)  # task -> trained model.pt
    ckpt_dir: str | None = None  # holds <task>/models/model.pt
    tune_search_cases: int = 6  # training cases used for the region-growing tolerance search


QUICK = {
    "epochs": {"retinal": 1, "cardiac": 1, "liver": 1, "lung": 1, "brain": 1},
    "data": {
        "retinal": {"num_train": 3, "num_test": 1, "size": 96},
        "cardiac": {"num_train": 3, "num_test": 1, "size": 64},
        "liver": {"num_train": 3, "num_test": 1, "size": 48},
        "lung": {"num_train": 3, "num_test": 1, "size": 48, "num_slices": 32},
        "brain": {"num_train": 3, "num_test": 1, "size": 48},
    },
    "overrides": {
        "retinal": {"samples_per_image": 2, "train#dataloader#batch_size": 2},
        "cardiac": {"train#dataloader#batch_size": 2},
        "liver": {"target_spacing": "[6.0,6.0,8.0]", "roi_size": "[32,32,16]"},
        "lung": {"target_spacing": "[6.0,6.0,6.0]", "roi_size": "[16,16,16]"},
        "brain": {"patches_per_volume": 32},
    },
    "num_workers": 0,
    "tune_search_cases": 2,
}


def make_settings(quick: bool = False, **overrides: Any) -> Settings:
    """Settings from the defaults, the quick preset and the command-line overrides (dicts merge per task), checked."""
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {sorted(names)}")
    s = Settings()
    if quick:  # the quick preset replaces the full-size values
        for key, value in QUICK.items():
            setattr(s, key, {k: (dict(v) if isinstance(v, dict) else v) for k, v in value.items()}
                    if isinstance(value, dict) else value)  # fmt: skip
    for key, value in overrides.items():  # dicts of the command line merge per task
        current = getattr(s, key)
        if isinstance(current, dict) and isinstance(value, str):
            value = as_mapping(value, key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged = dict(current)
            for task, v in value.items():
                merged[task] = {**merged[task], **v} if isinstance(merged.get(task), dict) and isinstance(v, dict) else v
            value = merged
        setattr(s, key, value)
    s.tasks = as_tuple(s.tasks)
    bad = [t for t in s.tasks if t not in TASK_BUNDLES]
    if bad:
        raise ValueError(f"unknown task(s) {bad}; choose from {list(TASK_BUNDLES)}")
    return s


# ---------------------------------------------------------------------------------------------------- scoring


def case_dice(task: str, pred: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Dice per class with the bundle's own definition (NaN where the bundle reports it undefined)."""
    scores = {}
    for name, index in cm.CLASSES[task].items():
        p, t = cm.truth_mask(task, pred, index), cm.truth_mask(task, label, index)
        if task == "liver" and name == "tumour" and not t.any():
            scores[name] = math.nan  # measures.case_scores: no tumour in the case
        elif task == "lung" and not (p.any() or t.any()):
            scores[name] = math.nan  # measures.case_scores: neither has a nodule
        else:
            scores[name] = cm.dice(p, t, mask if task == "retinal" else None)
    return scores


def read_metrics(path: Path, task: str) -> list[dict[str, Any]]:
    """Per-case Dice per class from a bundle's evaluation ``metrics.csv``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        scores = {}
        for name, column in metric_columns(task).items():
            value = row.get(column, "")
            scores[name] = float(value) if value not in ("", None) else math.nan
        out.append({"case": row["case"], "scores": scores})
    return out


def summarise(per_case: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``results.csv`` rows: mean, std and count of the defined Dice values per task, method and class."""
    rows = []
    keys = sorted({(r["task"], r["method"], r["class"]) for r in per_case}, key=lambda k: (
        list(TASK_BUNDLES).index(k[0]), METHODS.index(k[1]), list(cm.CLASSES[k[0]]).index(k[2])))  # fmt: skip
    for task, method, name in keys:
        sel = [r for r in per_case if (r["task"], r["method"], r["class"]) == (task, method, name)]
        values = np.array([r["dice"] for r in sel], float)
        values = values[np.isfinite(values)]
        seconds = float(np.mean([r["seconds"] for r in sel]))
        rows.append({
            "task": task, "method": method, "class": name,
            "dice_mean": round(float(values.mean()), 4) if len(values) else math.nan,
            "dice_std": round(float(values.std()), 4) if len(values) else math.nan,
            "cases": len(values), "seconds_per_case": round(seconds, 3),
        })  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------------- running


def prepare_data(task: str, s: Settings, out: Path) -> Path:
    """The task's dataset folder: ``--data_dir`` or the bundle's synthetic data written into ``out/<task>/data``."""
    if task in s.data_dir:
        return Path(s.data_dir[task]).resolve()
    root = out / task / "data"
    if (root / "dataset.json").is_file():
        print(f"[{task}] reusing the data set in {root}", flush=True)
        return root
    kwargs = dict(s.data.get(task, {}))
    accepted = inspect.signature(synthetic.generator(task).write_dataset).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in accepted and k != "seed"}
    print(f"[{task}] writing synthetic data {kwargs} to {root}", flush=True)
    synthetic.write_dataset(task, root, seed=s.seed, **kwargs)
    return root


def checkpoint(task: str, s: Settings, out: Path, data: Path) -> tuple[Path, float | None, int | None]:
    """A trained ``model.pt`` for ``task``: given, found in ``ckpt_dir``, or trained now (returns its seconds)."""
    if task in s.ckpt:
        return Path(s.ckpt[task]).resolve(), None, None
    if s.ckpt_dir and (Path(s.ckpt_dir) / task / "models" / "model.pt").is_file():
        return (Path(s.ckpt_dir) / task / "models" / "model.pt").resolve(), None, None
    ckpt = out / task / "models" / "model.pt"
    epochs = int(s.epochs[task])
    print(f"[{task}] training {TASK_BUNDLES[task]} for {epochs} epochs", flush=True)
    start = time.time()
    run_bundle(
        TASK_PROFILES[task].root, ["train.json"], dataset_dir=data, ckpt_path=ckpt,
        output_dir=out / task / "train", max_epochs=epochs, val_interval=max(1, epochs // 5),
        num_workers=s.num_workers, **s.overrides.get(task, {}),
    )  # fmt: skip
    return ckpt, time.time() - start, epochs


def evaluate_network(task: str, s: Settings, out: Path, data: Path, ckpt: Path) -> tuple[list[dict], float]:
    """Run the bundle's ``evaluate.json`` on the test split; return its per-case Dice and the wall seconds."""
    eval_dir = out / task / "eval"
    start = time.time()
    run_bundle(
        TASK_PROFILES[task].root, ["train.json", "evaluate.json"], dataset_dir=data, ckpt_path=ckpt,
        output_dir=eval_dir, num_workers=s.num_workers, **s.overrides.get(task, {}),
    )  # fmt: skip
    return read_metrics(eval_dir / "metrics.csv", task), time.time() - start


def run_classical(task: str, s: Settings, data: Path) -> tuple[list[dict], float, dict]:
    """Tune on the training split, segment every test case with the three methods; per-case rows."""
    index = json.loads((data / "dataset.json").read_text())
    if not index.get("test"):
        raise ValueError(f"{data / 'dataset.json'}: the classical methods need a labelled 'test' list")
    start = time.time()
    train = [cm.load_case(task, data, e) for e in index["training"]]
    params = cm.tune(task, train, max_search_cases=s.tune_search_cases, seed=s.seed)
    tune_s = time.time() - start
    print(f"[{task}] classical parameters tuned on {len(train)} training cases in {tune_s:.1f} s", flush=True)
    rows = []
    for entry in index["test"]:
        case = cm.load_case(task, data, entry)
        seeds = cm.click_seeds(task, case.label, case.spacing)
        for method in cm.METHODS:
            t0 = time.time()
            pred = cm.segment(task, method, case, params, seeds)
            seconds = time.time() - t0
            scores = case_dice(task, pred, case.label, case.mask)
            text = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            print(f"[{task}] {case.name} {method}: Dice {text} ({seconds:.2f} s)", flush=True)
            rows += [
                {"task": task, "method": method, "case": case.name, "class": k, "dice": v, "seconds": seconds}
                for k, v in scores.items()
            ]
    info = {"tune_s": tune_s, "train_cases": len(train), "seeds": "one click per structure per test case"}
    return rows, tune_s, info


# ---------------------------------------------------------------------------------------------------- outputs


def _fmt(x: float) -> str:
    """A Dice value for the tables."""
    return "n/a" if not math.isfinite(x) else f"{x:.3f}"


def write_report(path: Path, s: Settings, results: list[dict], info: dict[str, dict], wall_s: float) -> None:
    """``results.md``: one table per task (methods x classes + mean), the settings and the fairness rules."""
    lines = [
        "# Classical baselines against the trained bundles",
        "",
        f"`benchmarks/classical.py`, {platform.machine()} ({platform.system()}); seed {s.seed}; "
        f"total wall time {wall_s / 60:.1f} min.",
        "",
    ]
    for task in s.tasks:
        names = list(cm.CLASSES[task])
        t = info[task]
        lines += [f"## {task} ({TASK_BUNDLES[task]})", ""]
        train_text = (
            f"trained {t['epochs']} epochs in {t['train_s']:.0f} s" if t["train_s"] is not None
            else f"checkpoint given: {t['ckpt']}"
        )  # fmt: skip
        lines += [
            f"{t['test_cases']} test cases; network {train_text}; evaluation {t['eval_s']:.0f} s (bundle command, "
            f"start-up included); classical methods tuned on {t['train_cases']} training cases in {t['tune_s']:.1f} s.",
            "",
            "| method | " + " | ".join(f"Dice {n}" for n in names) + " | mean | s / case |",
            "|" + " --- |" * (len(names) + 3),
        ]
        for method in METHODS:
            sel = {r["class"]: r for r in results if r["task"] == task and r["method"] == method}
            if not sel:
                continue
            means = [sel[n]["dice_mean"] for n in names]
            finite = [m for m in means if math.isfinite(m)]
            mean = float(np.mean(finite)) if finite else math.nan
            cells = [f"{_fmt(sel[n]['dice_mean'])} ± {_fmt(sel[n]['dice_std'])}" for n in names]
            label = f"network ({TASK_BUNDLES[task]})" if method == NETWORK else method
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(mean)} | {sel[names[0]]['seconds_per_case']:.2f} |")
        lines.append("")
    lines += [
        "## Rules",
        "",
        "- Same data: every method segments the same held-out test cases, in each case's own grid; Dice per case and "
        "class with the bundle's definition (retinal: inside the field of view; liver: liver = labels 1 and 2, tumour "
        "Dice undefined without a true tumour; lung: undefined when neither truth nor prediction has a nodule; "
        "otherwise a class absent from both counts 1); undefined values are left out of mean and std.",
        "- Tuning: intensity windows (2.5-97.5th percentiles per class), the retinal threshold, edge thresholds, "
        "flood tolerances, sizes and the lung opening come from the labelled TRAINING split only, never from the "
        "test cases.",
        "- Region growing is given one simulated click per structure per test case, at the deepest point (maximum "
        "of the distance transform) of the true structure's largest component. A person would click there; it is "
        "information from the test labels that the threshold and edge methods and the networks do not get. A "
        "structure absent from a case gets no click.",
        "- Network: the bundle's `evaluate.json` run as users run it; its seconds per case are the whole command "
        "(start-up, model loading, resampling) divided by the test cases. Classical seconds: per case and method, "
        "tuning excluded.",
        "",
        "## Settings",
        "",
        f"- epochs: {json.dumps({t: s.epochs[t] for t in s.tasks})}",
        f"- data: {json.dumps({t: s.data.get(t, {}) for t in s.tasks})}",
        f"- bundle overrides: {json.dumps({t: s.overrides.get(t, {}) for t in s.tasks})}",
        f"- data folders: {json.dumps({t: str(info[t]['data']) for t in s.tasks})}",
        "",
    ]
    path.write_text("\n".join(lines))


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's default font at ``size`` points."""
    return ImageFont.load_default(size=size)


def draw_chart(path: Path, results: list[dict], tasks: tuple[str, ...]) -> None:
    """``dice.png``: grouped bars of the mean Dice over classes, one group per task, one bar per method."""
    width, height, left, top, bottom = 180 * len(tasks) + 120, 480, 70, 60, 80
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    plot_h = height - top - bottom
    draw.text((left, 15), "Held-out Dice (mean over classes) per task and method", fill="black", font=_font(16))
    for tick in np.linspace(0, 1, 6):
        y = top + plot_h * (1 - tick)
        draw.line([(left, y), (width - 20, y)], fill="#dddddd")
        draw.text((left - 40, y - 7), f"{tick:.1f}", fill="black", font=_font(12))
    group_w = (width - left - 20) / max(len(tasks), 1)
    bar_w = group_w * 0.8 / len(METHODS)
    for g, task in enumerate(tasks):
        x0 = left + g * group_w + group_w * 0.1
        for m, method in enumerate(METHODS):
            values = [r["dice_mean"] for r in results if r["task"] == task and r["method"] == method]
            values = [v for v in values if math.isfinite(v)]
            if not values:
                continue
            value = float(np.mean(values))
            x = x0 + m * bar_w
            draw.rectangle([x, top + plot_h * (1 - value), x + bar_w - 2, top + plot_h], fill=COLOURS[method])
        draw.text((x0 + group_w * 0.25, top + plot_h + 8), task, fill="black", font=_font(13))
    for m, method in enumerate(METHODS):
        x = left + m * 160
        draw.rectangle([x, height - 30, x + 14, height - 16], fill=COLOURS[method])
        draw.text((x + 20, height - 31), method, fill="black", font=_font(12))
    draw.line([(left, top), (left, top + plot_h), (width - 20, top + plot_h)], fill="black")
    image.save(path)


def main(output_dir: str, quick: bool = False, **settings: Any) -> str:
    """Run the benchmark (``--quick``: tiny smoke-test settings) and write its outputs into ``output_dir``."""
    s = make_settings(quick, **settings)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    per_case: list[dict[str, Any]] = []
    info: dict[str, dict] = {}
    for task in s.tasks:
        print(f"\n=== {task} ({TASK_BUNDLES[task]})", flush=True)
        data = prepare_data(task, s, out)
        ckpt, train_s, epochs = checkpoint(task, s, out, data)
        network_rows, eval_s = evaluate_network(task, s, out, data, ckpt)
        per_eval = eval_s / max(len(network_rows), 1)
        for row in network_rows:
            text = ", ".join(f"{k} {v:.3f}" for k, v in row["scores"].items())
            print(f"[{task}] {row['case']} network: Dice {text}", flush=True)
            per_case += [
                {"task": task, "method": NETWORK, "case": row["case"], "class": k, "dice": v, "seconds": per_eval}
                for k, v in row["scores"].items()
            ]
        rows, _, extra = run_classical(task, s, data)
        per_case += rows
        info[task] = {"train_s": train_s, "epochs": epochs, "ckpt": str(ckpt), "eval_s": eval_s, "data": data,
                      "test_cases": len(network_rows), **extra}  # fmt: skip
    results = summarise(per_case)
    write_csv_atomic(out / "per_case.csv", [{**r, "dice": round(r["dice"], 4), "seconds": round(r["seconds"], 3)}
                                     for r in per_case])  # fmt: skip
    write_csv_atomic(out / "results.csv", results)
    write_report(out / "results.md", s, results, info, time.time() - start)
    draw_chart(out / "dice.png", results, s.tasks)
    print(f"\nwrote results.csv, per_case.csv, results.md and dice.png to {out} ({time.time() - start:.0f} s)")
    print((out / "results.md").read_text())
    return str(out)


if __name__ == "__main__":
    fire.Fire(main)
