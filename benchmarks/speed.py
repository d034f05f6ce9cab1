"""Speed and memory benchmark of every bundle on this machine: inference overhead, training throughput, peak memory.

Three measurements per bundle (every folder of ``bundles/`` with a ``tooling.json``), each on data written by the
generator of the bundle's task (``synthetic.<task>``: ``write_inputs`` for unlabelled inference inputs,
``write_dataset`` for training data) with the generator options of the ``speed`` section of the bundle's
``tooling.json`` (read through ``common.profile``)::

    "speed": {"infer": {options of the inference inputs}, "train": {options of the training set, "num_train"
              optionally replacing --train_cases}, "memory": {options of the largest realistic input, "what": its
              description}, "quick": {"infer": {...}, "train": {...} (on top of the full ones), "overrides":
              {config overrides of the quick mode: coarse spacings, small windows}}}

- **Inference overhead.** ``inference.json`` is parsed with ``monai.bundle.ConfigParser`` and run in-process on a
  folder of images, end to end: dataset construction (reading, checking, preprocessing), sliding-window or
  slice-by-slice inference, post-processing (activation, inversion to the input grid, argmax, clean-up), writing
  the segmentations and the measurement tables. Forward hooks on the parsed ``network`` (hooks, not a wrapper, so
  the checkpoint's keys still match) record the shape, dtype and duration of every network call. Afterwards the
  bare network (eval, ``no_grad``, same device, same threads) is run again on random tensors of exactly the
  recorded shapes, in the same process. The ratio is end-to-end seconds / bare forward seconds (1.0: nothing
  but the network costs time). Every transform of the pre- and post-processing is timed too (seconds summed over
  the loading threads), so the report says where the rest of the time goes.
- **Training throughput.** ``train.json`` as shipped (its ``CacheDataset`` and loader workers) against a plain
  MONAI reference configuration on the same data: ``train#dataset`` replaced by ``monai.data.Dataset`` (every
  transform every epoch) and a default loader (``num_workers=0``, no persistent workers), as the Model Zoo's
  spleen bundle does. Same network, loss, optimizer, batch size, crops; validation, TensorBoard and checkpoint
  saving off in both arms (the learning-rate scheduler kept). Samples (crops or patches: the first dimension of
  each batch) per second over the epochs after the first; the cache building time is reported separately.
- **Peak memory.** ``python -m monai.bundle run --config_file bundles/<b>/configs/inference.json ...`` exactly as a
  user types it, in a child process, on the largest realistic input of each bundle (its ``speed.memory``, e.g.
  512x512x300 CT at 0.78x0.78x1.5 mm, a 2048x2048 fundus photograph, a 512x512 cine stack, three 256x256x180 MR
  modalities); its peak resident memory (``ru_maxrss`` from ``os.wait4``) and wall time.

Each bundle runs in its own child process (every bundle's configs import its own code as the package ``scripts``,
and torch's thread settings must be made before its first operation). Weights: ``--ckpt_dir`` holding
``<bundle>/models/model.pt`` (trained checkpoints); without it the freshly initialised network is saved and used,
which the report says (the network's cost does not depend on its weights; post-processing such as keeping the
largest component may).

Command line (``--quick``: small inputs and coarse spacings, a smoke test for CI in about two minutes)::

    python benchmarks/speed.py --output_dir OUT [--quick] [--bundles liver_ct_unet3d,retinal (names or tasks)]
        [--ckpt_dir DIR] [--device cuda:0] [--threads 2] [--data_dir DIR] [--profile]

Writes ``inference.csv``, ``inference_breakdown.csv``, ``training.csv``, ``memory.csv``, ``results.md`` and
``speed.png`` into ``output_dir``. Every field of :class:`Settings` is a command-line option.
"""

from __future__ import annotations

import collections
import cProfile
import dataclasses
import functools
import io
import json
import math
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Before torch starts its OpenMP pool: busy-waiting threads slow everything tens of times when another process
# shares the cores (see benchmarks/architectures.py). Child processes inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import fire
import torch
import torch.nn as nn
from bundle_training import train_for
from options import as_tuple
from PIL import Image, ImageDraw, ImageFont

import synthetic
from common.profile import BundleProfile, bundle_names, describe
from common.tables import write_csv_atomic

INFERENCE_TARGET = 1.25  # end-to-end / bare forward, at most
TRAINING_TARGET = 1.5  # samples per second of train.json / the plain reference, at least
SPEED_KINDS = ("infer", "train", "memory")  # the generator-option sections of a bundle's ``speed``


@dataclass
class Settings:
    """Everything a run depends on; each field is a command-line option (the sizes of the generated data are the
    bundles' own, from the ``speed`` section of their ``tooling.json``)."""

    bundles: tuple[str, ...] = field(default_factory=lambda: tuple(bundle_names()))  # bundle or task names
    threads: int = 2  # torch.set_num_threads in the measuring processes
    device: str = "cpu"
    ckpt_dir: str | None = None  # holds <bundle>/models/model.pt; None: untrained (freshly initialised) weights
    data_dir: str | None = None  # where the synthetic data is written (and kept); None: a temporary folder
    seed: int = 0
    profile: bool = False  # also print cProfile's top functions of a second, profiled end-to-end inference run
    # inference ratio: a folder of this many cases per bundle (generator options: ``speed.infer``)
    infer_cases: int = 2
    # training throughput (generator options: ``speed.train``)
    training: bool = True  # measure it (False: inference and memory only)
    train_cases: int = 6  # cases written per bundle (the bundle holds out its validation fraction), unless its
    # ``speed.train`` sets ``num_train`` (e.g. a cardiac subject gives two frames)
    train_epochs: int = 4  # per arm; the first is excluded from the rate
    # peak memory: the largest realistic input per bundle (generator options: ``speed.memory``)
    memory: bool = True
    memory_timeout_s: float = 3600.0
    #: config overrides per bundle (``{bundle or task: {id: value}}``) applied to every measurement; quick mode adds
    #: each bundle's ``speed.quick.overrides`` (coarse spacings, small windows) under them
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    quick: bool = False  # small inputs everywhere (``speed.quick``); the memory run reuses the inference folder
    # time to target: train.json on the bundle's demo data until its validation key metric reaches the bundle's
    # ``speed.target.metric`` (minutes per bundle; off unless asked)
    time_to_target: bool = False
    target_budget_s: float = 1800.0  # give up after this many training seconds


QUICK = {"infer_cases": 1, "train_cases": 3, "train_epochs": 2, "quick": True}


@functools.cache
def profile(bundle: str) -> BundleProfile:
    """The profile of a bundle (``tooling.json`` and ``metadata.json``), read once per process."""
    return describe(bundle)


def bundle_name(name: str) -> str:
    """The bundle called ``name``, or the first bundle whose task is ``name``; a ``ValueError`` if there is none."""
    names = bundle_names()
    if name in names:
        return name
    for bundle in names:
        if profile(bundle).task == name:
            return bundle
    tasks = sorted({profile(b).task for b in names})
    raise ValueError(f"unknown bundle {name!r}; valid: {names} or their tasks {tasks}")


def speed_section(bundle: str) -> dict[str, Any]:
    """The ``speed`` section of a bundle's ``tooling.json``; a ``ValueError`` naming the file if it has none."""
    section = profile(bundle).extra.get("speed")
    if not isinstance(section, dict):
        raise ValueError(f"{profile(bundle).root / 'tooling.json'}: no 'speed' section (see benchmarks/speed.py)")
    return section


def generator_options(bundle: str, kind: str, quick: bool) -> dict[str, Any]:
    """The generator options of ``kind`` (``infer``, ``train`` or ``memory``) from the bundle's ``speed`` section,
    its ``quick`` ones on top in quick mode."""
    section = speed_section(bundle)
    options = dict(section.get(kind, {}))
    if quick:
        options.update(section.get("quick", {}).get(kind, {}))
    return options


def make_settings(quick: bool = False, **overrides: Any) -> Settings:
    """Settings from the defaults, the quick preset and the command-line overrides, checked."""
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown settings {unknown}; valid: {sorted(names)}")
    s = Settings(**{**(QUICK if quick else {}), **overrides})
    s.bundles = tuple(bundle_name(b) for b in as_tuple(s.bundles, str))
    given = {bundle_name(b): dict(values) for b, values in s.overrides.items()}
    s.overrides = {}
    for b in s.bundles:
        quick_overrides = speed_section(b).get("quick", {}).get("overrides", {}) if s.quick else {}
        s.overrides[b] = {**quick_overrides, **given.get(b, {})}
        for kind in SPEED_KINDS:
            options = speed_section(b).get(kind)
            if not isinstance(options, dict):
                raise ValueError(f"{profile(b).root / 'tooling.json'}: speed.{kind} must map generator options")
    if s.train_epochs < 2:
        raise ValueError("train_epochs must be at least 2: the first epoch is excluded from the rate")
    return s


# ----------------------------------------------------------------------------------------------------------------
# measuring pieces


class ForwardRecorder:
    """Forward pre- and post-hooks on ``module`` recording each call's input shape, dtype and duration (seconds).

    Hooks rather than a wrapper, so the module's ``state_dict`` keys (and a ``CheckpointLoader`` into it) are
    unchanged. On CUDA the device is synchronised around each call so that the durations are real.
    """

    def __init__(self, module: nn.Module) -> None:
        self.calls: list[tuple[tuple[int, ...], torch.dtype, float]] = []
        self._start: list[float] = []
        self._handles = [
            module.register_forward_pre_hook(self._pre, with_kwargs=True),
            module.register_forward_hook(self._post, with_kwargs=True),
        ]

    @staticmethod
    def _sync(tensor: Any) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
            torch.cuda.synchronize(tensor.device)

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._sync(args[0] if args else None)
        self._start.append(time.perf_counter())

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        self._sync(x)
        self.calls.append((tuple(x.shape), x.dtype, time.perf_counter() - self._start.pop()))

    @property
    def seconds(self) -> float:
        return sum(c[2] for c in self.calls)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [c[0] for c in self.calls]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def replay_forward(
    network: nn.Module, calls: Sequence[tuple[tuple[int, ...], torch.dtype, float]], device: torch.device
) -> float:
    """Seconds of the bare network (eval, no_grad) on random tensors of exactly the recorded shapes and dtypes.

    One untimed warm-up call per distinct shape first; the inputs are made before the clock starts.
    """
    network.eval()
    inputs = {(shape, dtype): torch.rand(shape, device=device).to(dtype) for shape, dtype, _ in calls}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for x in inputs.values():
            network(x)
        sync()
        start = time.perf_counter()
        for shape, dtype, _ in calls:
            network(inputs[shape, dtype])
        sync()
    return time.perf_counter() - start


class StageTimer:
    """Seconds spent in each transform's ``__call__`` (summed over threads), by stage and transform name.

    Each instance is given a subclass of its own class, with the same name, whose ``__call__`` is timed: the
    objects stay what they were for ``isinstance`` checks and for ``Invertd``'s matching of applied operations.
    """

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.order: list[tuple[str, str]] = []

    def wrap(self, obj: Any, stage: str, name: str | None = None) -> None:
        cls = obj.__class__
        key = (stage, name or cls.__name__)
        if key in self.order:
            key = (stage, f"{key[1]}#{sum(k[0] == stage and k[1].startswith(key[1]) for k in self.order) + 1}")
        self.order.append(key)
        timer = self

        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N807 - the timed method
            start = time.perf_counter()
            try:
                return cls.__call__(self, *args, **kwargs)
            finally:
                timer.seconds[key] += time.perf_counter() - start

        obj.__class__ = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})

    def wrap_compose(self, compose: Any, stage: str) -> None:
        for t in compose.transforms:
            self.wrap(t, stage)

    def total(self, stage: str) -> float:
        return sum(s for (st, _), s in self.seconds.items() if st == stage)


class ThroughputCounter:
    """Samples (the first dimension of each batch's ``key``) and seconds per epoch of an ignite engine."""

    def __init__(self, key: str = "image") -> None:
        self.key = key
        self.epochs: list[dict[str, float]] = []
        self._start = 0.0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Any) -> None:
        self.epochs.append({"samples": 0, "iterations": 0, "seconds": 0.0})
        self._start = time.perf_counter()

    def _iteration(self, engine: Any) -> None:
        batch = engine.state.batch  # MONAI engines decollate it into a list of samples after the iteration
        samples = len(batch) if isinstance(batch, (list, tuple)) and isinstance(batch[0], dict) else None
        if samples is None:
            value = batch[self.key] if isinstance(batch, dict) else batch[0]
            samples = int(value.shape[0])
        self.epochs[-1]["samples"] += samples
        self.epochs[-1]["iterations"] += 1

    def _epoch_completed(self, engine: Any) -> None:
        self.epochs[-1]["seconds"] = time.perf_counter() - self._start

    def rate(self, skip: int = 1) -> float:
        """Samples per second over the epochs after the first ``skip``."""
        steady = self.epochs[skip:]
        seconds = sum(e["seconds"] for e in steady)
        return sum(e["samples"] for e in steady) / seconds if seconds > 0 else float("nan")


def peak_rss_of(cmd: Sequence[str], log_path: Path, timeout_s: float, env: dict[str, str] | None = None) -> dict:
    """Run ``cmd`` as a child; return its peak resident memory (MiB, ``ru_maxrss``), wall seconds and exit code."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(list(cmd), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = start + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "peak_rss_mib": usage.ru_maxrss / 1024.0,  # KiB on Linux
        "wall_s": time.perf_counter() - start,
        "returncode": proc.returncode,
    }


# ----------------------------------------------------------------------------------------------------------------
# data


def use_bundle_code(bundle: str) -> None:
    """Make the bundle's own code importable as ``scripts`` (its configs' ``scripts.<module>`` targets); the child
    process measuring a bundle holds that bundle's ``scripts`` package only."""
    root = str(profile(bundle).root)
    if root not in sys.path:
        sys.path.insert(0, root)
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]  # another bundle's scripts package


def write_inputs(bundle: str, folder: Path, count: int, seed: int, options: dict[str, Any]) -> Path:
    """Write ``count`` unlabelled inference inputs of a bundle into ``folder`` with its task's generator
    (``write_inputs``, the bundle's input format) and ``options``; a folder that already holds files is kept."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        return folder  # written by an earlier run (into --data_dir), or the user's own inputs
    synthetic.generator(profile(bundle).task).write_inputs(folder, count, seed, **options)
    return folder


def write_training_data(bundle: str, folder: Path, count: int, seed: int, options: dict[str, Any]) -> Path:
    """A labelled data set (``dataset.json``) of ``count`` cases, or the options' ``num_train``, written by the
    task's ``write_dataset``; a folder that already holds a ``dataset.json`` is kept."""
    if (folder / "dataset.json").is_file():
        return folder
    options = dict(options)
    num_train = int(options.pop("num_train", count))
    synthetic.write_dataset(profile(bundle).task, folder, num_train=num_train, num_test=0, seed=seed, **options)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# one bundle, in its own process


def parse_bundle(bundle: str, configs: Sequence[str], values: dict[str, Any]) -> Any:
    """A ``ConfigParser`` of the bundle's ``configs`` merged in order, with ``values`` set (ids with ``#``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(profile(bundle).config(name)) for name in configs])
    parser["bundle_root"] = str(profile(bundle).root)
    for key, value in values.items():
        parser[key] = value
    return parser


def checkpoint_for(bundle: str, s: Settings, work: Path) -> tuple[Path, str]:
    """The checkpoint to load and a note on the weights: ``--ckpt_dir``'s where it holds one for ``bundle``,
    otherwise the freshly initialised network's."""
    if s.ckpt_dir:
        path = Path(s.ckpt_dir) / bundle / "models" / "model.pt"
        if path.is_file():
            return path, "trained"
        print(f"  {path}: no checkpoint for {bundle} in --ckpt_dir, using untrained weights", flush=True)
    path = work / "untrained_model.pt"
    if not path.is_file():
        torch.manual_seed(s.seed)
        network = parse_bundle(bundle, ["inference.json"], {}).get_parsed_content("network_def")
        torch.save(network.state_dict(), path)
    return path, "untrained"


def measure_inference(bundle: str, s: Settings, inputs: Path, out: Path, ckpt: Path) -> dict[str, Any]:
    """End-to-end inference of ``inputs`` in-process, the forward calls recorded, then the bare forward replayed."""
    device = torch.device(s.device)
    values = {
        "input_dir": str(inputs),
        "output_dir": str(out),
        "ckpt_path": str(ckpt),
        "device": f"$torch.device('{s.device}')",
        **s.overrides.get(bundle, {}),
    }
    parser = parse_bundle(bundle, ["inference.json"], values)
    network = parser.get_parsed_content("network")
    recorder = ForwardRecorder(network)
    timer = StageTimer()
    timer.wrap_compose(parser.get_parsed_content("preprocessing"), "preprocessing")
    timer.wrap_compose(parser.get_parsed_content("postprocessing"), "postprocessing")
    inferer = parser.get_parsed_content("inferer")
    timer.wrap(inferer, "inference", "inferer (windows, blending; forward excluded below)")
    profiler = cProfile.Profile() if s.profile else None
    start = time.perf_counter()
    dataset = parser.get_parsed_content("dataset")  # screening: every case read and prepared once
    screened = time.perf_counter() - start
    evaluator = parser.get_parsed_content("evaluator")
    evaluator.run()
    e2e = time.perf_counter() - start
    recorder.remove()
    forward_in_run = recorder.seconds
    bare = replay_forward(network, recorder.calls, device)
    if profiler is not None:  # a second run, profiled, for the breakdown by function only
        parser2 = parse_bundle(bundle, ["inference.json"], {**values, "output_dir": str(out) + "_profiled"})
        profiler.enable()
        parser2.get_parsed_content("evaluator").run()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
        print(f"[{bundle}] cProfile, top 30 by cumulative time:\n{text.getvalue()}", flush=True)
    inferer_s = timer.seconds.pop(("inference", timer.order[-1][1]))
    pre, post = timer.total("preprocessing"), timer.total("postprocessing")
    breakdown = [
        {"stage": stage, "step": name, "seconds": round(timer.seconds.get((stage, name), 0.0), 4)}
        for stage, name in timer.order
        if stage != "inference"
    ]
    breakdown.append({"stage": "inference", "step": "network forward", "seconds": round(forward_in_run, 4)})
    breakdown.append(
        {"stage": "inference", "step": "inferer overhead", "seconds": round(inferer_s - forward_in_run, 4)}
    )
    other = e2e - (pre + inferer_s + post)
    rest = "rest (loader, handlers, tables, checkpoint)"
    breakdown.append({"stage": "other", "step": rest, "seconds": round(other, 4)})
    shapes = sorted({str(list(c[0])) for c in recorder.calls})
    written = sorted(p.name for p in out.glob("*_seg.*"))
    roi = getattr(inferer, "roi_size", None)
    if roi is not None and hasattr(inferer, "spatial_dim") and len(roi) == 3:  # SliceInferer: 2D windows
        roi = [r for i, r in enumerate(roi) if i != inferer.spatial_dim]
    return {
        "bundle": bundle,
        "cases": len(dataset),
        "failed": len(getattr(dataset, "failures", [])),
        "written": len(written),
        "input_shapes": ";".join(_input_shapes(inputs)),
        "inferer": type(inferer).__name__,
        "roi_size": json.dumps(list(roi) if roi is not None else None),
        "sw_batch_size": getattr(inferer, "sw_batch_size", ""),
        "windows": len(recorder.calls),
        "window_shapes": ";".join(shapes),
        "e2e_s": round(e2e, 4),
        "screening_s": round(screened, 4),
        "forward_in_run_s": round(forward_in_run, 4),
        "bare_forward_s": round(bare, 4),
        "ratio": round(e2e / bare, 4) if bare > 0 else float("nan"),
        "preprocessing_s": round(pre, 4),
        "inferer_overhead_s": round(inferer_s - forward_in_run, 4),
        "postprocessing_s": round(post, 4),
        "other_s": round(other, 4),
        "breakdown": breakdown,
    }


def _input_shapes(folder: Path) -> list[str]:
    """Shapes of the first files of an input folder, for the report."""
    import nibabel as nib

    shapes = []
    for p in sorted(folder.iterdir())[:4]:
        if p.name.endswith((".nii.gz", ".nii")):
            shapes.append("x".join(map(str, nib.load(p).shape)))
        else:
            with Image.open(p) as im:
                shapes.append(f"{im.size[1]}x{im.size[0]}x{len(im.getbands())}")
    return shapes


def measure_training(bundle: str, s: Settings, data: Path, work: Path, reference: bool) -> dict[str, Any]:
    """Samples per second of ``train.json`` (``reference``: plain Dataset, default loader) over epochs 2..N."""
    values: dict[str, Any] = {
        "dataset_dir": str(data),
        "output_dir": str(work / ("train_reference" if reference else "train_bundle")),
        "ckpt_path": str(work / "train_model.pt"),
        "device": f"$torch.device('{s.device}')",
        "max_epochs": s.train_epochs,
        **s.overrides.get(bundle, {}),
    }
    parser = parse_bundle(bundle, ["train.json"], values)
    # validation, TensorBoard, console statistics and checkpoint saving off in both arms; the LR schedule kept
    parser["train#handlers"] = [
        h for h in parser["train#handlers"] if str(h.get("_target_", "")).endswith("LrScheduleHandler")
    ]
    if reference:
        plain = {"_target_": "Dataset", "data": "@train_datalist", "transform": "@train#preprocessing"}
        parser["train#dataset"] = plain
        parser["train#dataloader#num_workers"] = 0
        parser["train#dataloader#persistent_workers"] = False
    for i in range(len(parser.get("initialize", []))):  # set_determinism, as the bundle does
        parser.get_parsed_content(f"initialize#{i}")
    start = time.perf_counter()
    dataset = parser.get_parsed_content("train#dataset")
    build = time.perf_counter() - start
    trainer = parser.get_parsed_content("train#trainer")
    counter = ThroughputCounter()
    counter.attach(trainer)
    trainer.run()
    loader = parser.get_parsed_content("train#dataloader")
    return {
        "dataset": type(dataset).__name__,
        "num_workers": int(loader.num_workers),
        "batch_size": int(loader.batch_size or 1),
        "cases": len(dataset),
        "samples_per_epoch": int(counter.epochs[-1]["samples"]),
        "cache_build_s": round(build, 3),
        "first_epoch_s": round(counter.epochs[0]["seconds"], 3),
        "samples_per_s": round(counter.rate(skip=1), 3),
    }


def worker(spec_path: str) -> None:
    """Measure one bundle (inference ratio and training throughput) and write its results as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    s = make_settings(**spec["settings"])
    bundle, work, data = spec["bundle"], Path(spec["work"]), Path(spec["data"])
    torch.set_num_threads(s.threads)
    use_bundle_code(bundle)  # the bundle's configs import its code as ``scripts``
    log = lambda msg: print(f"[{profile(bundle).task} {time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    result: dict[str, Any] = {"bundle": bundle}
    ckpt, weights = checkpoint_for(bundle, s, work)
    result["weights"] = weights
    options = generator_options(bundle, "infer", s.quick)
    log(f"writing {s.infer_cases} inference input(s), generator options {options}")
    inputs = write_inputs(bundle, data / "infer_inputs", s.infer_cases, s.seed + 1000, options)
    out = work / "infer_out"
    shutil.rmtree(out, ignore_errors=True)
    log("inference, end to end, forward calls recorded")
    result["inference"] = measure_inference(bundle, s, inputs, out, ckpt)
    r = result["inference"]
    log(
        f"inference: {r['e2e_s']:.2f} s end to end, forward {r['forward_in_run_s']:.2f} s in the run, "
        f"bare forward {r['bare_forward_s']:.2f} s over {r['windows']} calls -> ratio {r['ratio']:.2f}"
    )
    for row in sorted(r["breakdown"], key=lambda b: -b["seconds"])[:8]:
        log(f"    {row['seconds']:8.3f} s  {row['stage']}: {row['step']}")
    if s.training:
        options = generator_options(bundle, "train", s.quick)
        log(f"writing the training data, generator options {options}")
        train_data = write_training_data(bundle, data / "train_data", s.train_cases, s.seed, options)
    result["training"] = {}
    for arm, reference in (("bundle", False), ("reference", True)) if s.training else ():
        log(f"training throughput, {arm} arm, {s.train_epochs} epochs")
        result["training"][arm] = measure_training(bundle, s, train_data, work, reference)
        t = result["training"][arm]
        log(
            f"    {t['dataset']}, {t['num_workers']} loader workers: {t['samples_per_s']:.2f} samples/s "
            f"(cache {t['cache_build_s']:.2f} s, first epoch {t['first_epoch_s']:.2f} s)"
        )
    if s.time_to_target:
        result["target"] = measure_time_to_target(bundle, s, data, work, log)
    Path(spec["result"]).write_text(json.dumps(result, indent=1, default=str))


def measure_time_to_target(bundle: str, s: Settings, data: Path, work: Path, log: Any) -> dict[str, Any]:
    """Seconds of ``train.json`` training (as shipped) until the validation key metric first reaches the bundle's
    ``speed.target.metric``, on the bundle's demo data (quick: its quick data and training overrides)."""
    target = speed_section(bundle)["target"]
    p = profile(bundle)
    options = dict((p.quick if s.quick else p.demo)["data"])
    folder = data / "target_data"
    if not (folder / "dataset.json").is_file():
        synthetic.write_dataset(p.task, folder, **{**options, "seed": s.seed})
    values = {"dataset_dir": str(folder), "output_dir": str(work / "target_train"),
              "ckpt_path": str(work / "target_models" / "model.pt"), "device": f"$torch.device('{s.device}')",
              **({k: v for k, v in p.quick["train"].items() if k != "max_epochs"} if s.quick else {}),
              **s.overrides.get(bundle, {})}  # fmt: skip
    budget = float(target.get("quick_budget_s", 30.0)) if s.quick else s.target_budget_s
    shutil.rmtree(work / "target_models", ignore_errors=True)
    log(f"time to target: validation {target['what']} >= {target['metric']}, at most {budget:.0f} s")
    run = train_for(p.root, values, budget, target=float(target["metric"]))
    reached = run["time_to_target_s"]
    outcome = f"reached in {reached:.1f} s" if reached is not None else "not reached"
    log(f"    {outcome} ({run['epochs']} epochs)")
    return {
        "bundle": bundle,
        "target": f"{target['what']} >= {target['metric']}",
        "time_to_target_s": round(reached, 1) if reached is not None else math.nan,
        "budget_s": budget,
        "epochs": run["epochs"],
        "iterations": run["iterations"],
        "best_metric": round(max((m for _, m in run["curve"]), default=math.nan), 4),
        "validations": len(run["curve"]),
        "setup_s": round(run["setup_s"], 1),
        "train_cases": options.get("num_train", ""),
        "threads": s.threads,
        "device": s.device,
    }


# ----------------------------------------------------------------------------------------------------------------
# the parent: one child per bundle, the memory runs, the report


def memory_inputs(bundle: str, s: Settings, data: Path) -> tuple[Path, str]:
    """The largest realistic input of a bundle (``speed.memory``, written once), and its description."""
    if s.quick:
        return data / "infer_inputs", "the quick inference input"
    options = generator_options(bundle, "memory", s.quick)
    what = str(options.pop("what", f"{profile(bundle).task} input {options}"))
    return write_inputs(bundle, data / "memory_input", 1, s.seed + 2000, options), what


def _cli_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def measure_memory(bundle: str, s: Settings, data: Path, work: Path, ckpt: Path) -> dict[str, Any]:
    """``python -m monai.bundle run`` of ``inference.json`` on the largest input: peak RSS and wall time."""
    if not s.quick:  # write the input in a child: a child's ru_maxrss starts from its parent's peak, kept small
        subprocess.run(
            [sys.executable, __file__, "__memory_input__", bundle, json.dumps(_settings_dict(s)), str(data)],
            cwd=ROOT,
            check=True,
        )
    folder, what = memory_inputs(bundle, s, data)  # written above: returns at once
    out = work / "memory_out"
    shutil.rmtree(out, ignore_errors=True)
    config = profile(bundle).root / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config / "inference.json")]
    cmd += ["--bundle_root", str(profile(bundle).root), "--input_dir", str(folder), "--output_dir", str(out)]
    cmd += ["--ckpt_path", str(ckpt), "--logging_file", str(config / "logging.conf")]
    if s.device != "cpu":
        cmd += ["--device", f"$torch.device('{s.device}')"]
    for key, value in s.overrides.get(bundle, {}).items():
        cmd += [f"--{key}", _cli_value(value)]
    result = peak_rss_of(cmd, work / "memory_run.log", s.memory_timeout_s)
    return {
        "bundle": bundle,
        "input": what,
        "input_shapes": ";".join(_input_shapes(folder)),
        "peak_rss_mib": round(result["peak_rss_mib"], 1),
        "wall_s": round(result["wall_s"], 2),
        "returncode": result["returncode"],
        "written": len(list(out.glob("*_seg.*"))),
        "log": str(work / "memory_run.log"),
    }


def _settings_dict(s: Settings) -> dict[str, Any]:
    return dataclasses.asdict(s)


def machine() -> str:
    """The machine in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    import monai

    return (
        f"{cpu}, {os.cpu_count()} logical CPUs{gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"MONAI {monai.__version__}"
    )


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + " --- |" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(key, "")) for key, _ in columns) + " |")
    return "\n".join(lines)


def write_report(
    out: Path, s: Settings, infer: list[dict], train: list[dict], memory: list[dict], weights: set[str], wall_s: float
) -> None:
    notes = []
    if "untrained" in weights:
        notes.append(
            "Where the `weights` column says untrained, the network was freshly initialised (seed "
            f"{s.seed}): the network's cost does not depend on its weights, but post-processing that depends on "
            "the prediction (largest component, small-nodule removal, measurements) may cost differently with "
            "trained weights; pass `--ckpt_dir` to measure those."
        )
    if s.quick:
        notes.append("Quick mode: small inputs and coarse spacings (a smoke test); do not quote these numbers.")
    text = [
        "# Speed and memory of the bundles",
        "",
        f"Machine: {machine()}; {s.threads} torch threads in the measuring processes, device `{s.device}`; "
        f"`OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}`. Total wall time {wall_s / 60:.1f} min.",
        "",
        *[f"- {n}" for n in notes],
        "",
        f"## Inference: end to end against the bare network (target: ratio at most {INFERENCE_TARGET})",
        "",
        "End to end: `inference.json` in-process on a folder, from dataset construction (reading, checks, "
        "preprocessing) to the last file and table written. Bare forward: the network alone, eval and no_grad, on "
        "random tensors of exactly the shapes it was called with in the run.",
        "",
        markdown_table(
            infer,
            [
                ("bundle", "bundle"),
                ("weights", "weights"),
                ("cases", "cases"),
                ("input_shapes", "input shapes"),
                ("windows", "network calls"),
                ("window_shapes", "call shapes"),
                ("e2e_s", "end to end s"),
                ("forward_in_run_s", "forward in run s"),
                ("bare_forward_s", "bare forward s"),
                ("ratio", "ratio"),
                ("preprocessing_s", "preprocessing s*"),
                ("inferer_overhead_s", "inferer overhead s"),
                ("postprocessing_s", "postprocessing s"),
                ("other_s", "rest s"),
            ],
        ),
        "",
        "\\* seconds summed over the loading threads (the screening dataset prepares cases in parallel), so the "
        "columns need not add up to the end-to-end time. Per transform: `inference_breakdown.csv`.",
        "",
        f"## Training: samples per second, `train.json` against a plain MONAI reference (target: at least "
        f"{TRAINING_TARGET}x)",
        "",
        "Reference: the same config with `train#dataset` a plain `monai.data.Dataset` (every transform every "
        "epoch) and the default loader (`num_workers=0`). Rates over epochs 2..N (the first, with worker start-up, "
        "excluded); the cache is built before the first epoch and its time is listed on its own.",
        "",
        markdown_table(
            train,
            [
                ("bundle", "bundle"),
                ("cases", "training cases"),
                ("samples_per_epoch", "samples / epoch"),
                ("bundle_dataset", "bundle dataset"),
                ("bundle_num_workers", "workers"),
                ("bundle_samples_per_s", "bundle samples/s"),
                ("cache_build_s", "cache build s"),
                ("reference_samples_per_s", "reference samples/s"),
                ("speedup", "speed-up"),
            ],
        ),
        "",
        "## Peak memory of inference on the largest realistic input",
        "",
        "`python -m monai.bundle run --config_file bundles/<b>/configs/inference.json ...` as a child process "
        "(default torch threads); peak resident set size from `os.wait4`.",
        "",
        markdown_table(
            memory,
            [
                ("bundle", "bundle"),
                ("input", "input"),
                ("input_shapes", "shapes"),
                ("peak_rss_mib", "peak RSS MiB"),
                ("wall_s", "wall s"),
                ("returncode", "exit code"),
                ("written", "segmentations"),
            ],
        ),
        "",
    ]
    (out / "results.md").write_text("\n".join(text))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_chart(path: Path, infer: list[dict], train: list[dict], memory: list[dict]) -> None:
    """Three bar panels: inference ratio (target line), training speed-up (target line), peak RSS."""
    short = lambda row: profile(row["bundle"]).task  # noqa: E731 - bars are labelled with the task
    panels = [
        ("inference: end to end / bare forward", {short(r): r["ratio"] for r in infer}, INFERENCE_TARGET),
        ("training: bundle / reference samples/s", {short(r): r["speedup"] for r in train}, TRAINING_TARGET),
        ("inference peak RSS, GiB", {short(r): r["peak_rss_mib"] / 1024 for r in memory}, None),
    ]
    width, height, margin = 1260, 420, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(15), _font(12)
    panel_w = width // 3
    for k, (title, values, target) in enumerate(panels):
        x0 = k * panel_w + margin
        x1, y0, y1 = (k + 1) * panel_w - 15, 50, height - 60
        draw.text((k * panel_w + 15, 15), title, fill="black", font=font)
        finite = [v for v in values.values() if isinstance(v, (int, float)) and math.isfinite(v)]
        top = max(finite + [target or 0, 1e-6]) * 1.15
        draw.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")
        for frac in (0.0, 0.5, 1.0):
            y = y1 - frac * (y1 - y0)
            draw.text((x0 - 40, y - 7), f"{top * frac:.2g}", fill="black", font=small)
        n = max(1, len(values))
        slot = (x1 - x0) / n
        for i, (name, v) in enumerate(values.items()):
            bx = x0 + i * slot + slot * 0.15
            if isinstance(v, (int, float)) and math.isfinite(v):
                by = y1 - v / top * (y1 - y0)
                colour = "#1f77b4"
                if target is not None:
                    good = v <= target if k == 0 else v >= target
                    colour = "#2ca02c" if good else "#d62728"
                draw.rectangle([bx, by, bx + slot * 0.7, y1], fill=colour)
                draw.text((bx, by - 15), f"{v:.2f}", fill="black", font=small)
            draw.text((bx, y1 + 6), name, fill="black", font=small)
        if target is not None:
            ty = y1 - target / top * (y1 - y0)
            draw.line([(x0, ty), (x1, ty)], fill="#ff7f0e", width=2)
            draw.text((x1 - 90, ty - 16), f"target {target:g}", fill="#ff7f0e", font=small)
    image.save(path)


def target_section(rows: list[dict[str, Any]]) -> str:
    """The results.md section of the time-to-target measurement."""
    lines = ["", "## Time to target", "",
             "`train.json` as shipped, on the bundle's demo data, until its validation key metric first reaches the "
             "target (resolution: the validation interval); training seconds from the first iteration, validation "
             "included, dataset caching apart (setup_s).", "",
             "| bundle | target | time_to_target_s | epochs | best metric | validations | setup_s | budget_s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        reached = "not reached" if math.isnan(r["time_to_target_s"]) else f"{r['time_to_target_s']:.0f}"
        lines.append(f"| {r['bundle']} | {r['target']} | {reached} | {r['epochs']} | {r['best_metric']:.3f} | "
                     f"{r['validations']} | {r['setup_s']:.0f} | {r['budget_s']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(output_dir: str, quick: bool = False, **settings: Any) -> str:
    """Run the benchmark (``--quick``: small smoke-test inputs) and write its outputs into ``output_dir``."""
    s = make_settings(quick, **settings)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"speed benchmark: {len(s.bundles)} bundle(s), settings {dataclasses.asdict(s)}", flush=True)
    infer_rows, breakdown_rows, train_rows, memory_rows, weights = [], [], [], [], set()
    target_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(s.data_dir).resolve() if s.data_dir else Path(tmp) / "data"
        for bundle in s.bundles:
            work, data = Path(tmp) / bundle, data_root / bundle
            work.mkdir(parents=True, exist_ok=True)
            data.mkdir(parents=True, exist_ok=True)
            spec = {"bundle": bundle, "settings": _settings_dict(s), "work": str(work), "data": str(data)}
            spec["result"] = str(work / "result.json")
            (work / "spec.json").write_text(json.dumps(spec))
            print(f"== {bundle}: inference ratio and training throughput (child process)", flush=True)
            subprocess.run([sys.executable, __file__, "__worker__", str(work / "spec.json")], cwd=ROOT, check=True)
            result = json.loads((work / "result.json").read_text())
            weights.add(result["weights"])
            inf = result.pop("inference")
            breakdown_rows += [{"bundle": bundle, **b} for b in inf.pop("breakdown")]
            infer_rows.append({**inf, "weights": result["weights"], "threads": s.threads, "device": s.device})
            if "target" in result:
                target_rows.append(result["target"])
            arms = result["training"]
            b, r = arms.get("bundle"), arms.get("reference")
            train_rows += [] if not arms else [
                {
                    "bundle": bundle,
                    "cases": b["cases"],
                    "batch_size": b["batch_size"],
                    "samples_per_epoch": b["samples_per_epoch"],
                    "epochs": s.train_epochs,
                    "bundle_dataset": b["dataset"],
                    "bundle_num_workers": b["num_workers"],
                    "bundle_samples_per_s": b["samples_per_s"],
                    "cache_build_s": b["cache_build_s"],
                    "bundle_first_epoch_s": b["first_epoch_s"],
                    "reference_dataset": r["dataset"],
                    "reference_num_workers": r["num_workers"],
                    "reference_samples_per_s": r["samples_per_s"],
                    "reference_first_epoch_s": r["first_epoch_s"],
                    "speedup": round(b["samples_per_s"] / r["samples_per_s"], 3) if r["samples_per_s"] else math.nan,
                    "threads": s.threads,
                    "device": s.device,
                }
            ]
            if s.memory:
                print(f"== {bundle}: peak memory of `monai.bundle run` inference", flush=True)
                ckpt = Path(s.ckpt_dir or work) / bundle / "models" / "model.pt"
                ckpt = ckpt if s.ckpt_dir and ckpt.is_file() else work / "untrained_model.pt"
                m = measure_memory(bundle, s, data, work, ckpt)
                if m["returncode"] != 0:
                    print(Path(m["log"]).read_text()[-3000:], flush=True)
                    raise RuntimeError(f"{bundle}: the memory run failed with exit code {m['returncode']}")
                print(f"    peak RSS {m['peak_rss_mib']:.0f} MiB, {m['wall_s']:.1f} s, on {m['input']}", flush=True)
                memory_rows.append({k: v for k, v in m.items() if k != "log"})
        wall = time.perf_counter() - start
        write_csv_atomic(out / "inference.csv", infer_rows)
        write_csv_atomic(out / "inference_breakdown.csv", breakdown_rows)
        if train_rows:
            write_csv_atomic(out / "training.csv", train_rows)
        if memory_rows:
            write_csv_atomic(out / "memory.csv", memory_rows)
        if target_rows:
            write_csv_atomic(out / "time_to_target.csv", target_rows)
        write_report(out, s, infer_rows, train_rows, memory_rows, weights, wall)
        if target_rows:
            with open(out / "results.md", "a") as report:
                report.write(target_section(target_rows))
        draw_chart(out / "speed.png", infer_rows, train_rows, memory_rows)
    print(f"wrote {out}/results.md ({wall / 60:.1f} min)", flush=True)
    return str(out / "results.md")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "__worker__":
        worker(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "__memory_input__":
        memory_inputs(sys.argv[2], make_settings(**json.loads(sys.argv[3])), Path(sys.argv[4]))
    else:
        fire.Fire(main)
