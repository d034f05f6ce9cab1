"""nnU-Net v2 through its Python API, for the peers benchmark: a ``dataset.json`` data set in nnU-Net's raw format,
planned and preprocessed (with its data-set integrity check), trained on the CPU for a wall-clock budget, and its
test cases predicted with its own predictor.

nnU-Net reads ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` when it is imported: call
:func:`set_paths` first, in the process that imports it. Its trainers are looked up by class name inside its own
package, so the budget trainer here is driven directly (``BudgetTrainer(...).run_training()``) and prediction builds
the network from the plans (``nnUNetPredictor.manual_initialization``), as nnU-Net's own final validation does.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def set_paths(root: str | Path) -> dict[str, Path]:
    """Point nnU-Net's three folders at ``root/{raw,preprocessed,results}`` (before nnU-Net is imported)."""
    paths = {}
    for variable, folder in zip(PATH_VARIABLES, ("raw", "preprocessed", "results")):
        paths[variable] = Path(root).resolve() / folder
        paths[variable].mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(paths[variable])
    os.environ.setdefault("nnUNet_compile", "false")
    return paths


def _stem(path: str | Path) -> str:
    """A file name without its extension(s) (``case.nii.gz`` -> ``case``)."""
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem


def _ending(path: str | Path) -> str:
    """nnU-Net's ``file_ending`` of a file (``.nii.gz``, ``.png``)."""
    return ".nii.gz" if str(path).endswith(".nii.gz") else Path(path).suffix


def case_name(entry: Mapping[str, Any]) -> str:
    """The case identifier of a ``dataset.json`` entry: its image's file name without extension (and without the
    ``_0000`` channel suffix where a case is one file per channel), as the bundles name their outputs."""
    files = image_files(entry)
    stem = _stem(files[0])
    return re.sub(r"_\d{4}$", "", stem) if len(files) > 1 else stem


def image_files(entry: Mapping[str, Any]) -> list[str]:
    """The image file(s) of an entry: one per channel, or one file holding every channel (RGB photographs)."""
    image = entry["image"]
    return list(image) if isinstance(image, (list, tuple)) else [image]


def _link(source: Path, target: Path) -> None:
    """Symlink ``target`` -> ``source`` (replacing an old link)."""
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(source.resolve())


def _write_label(source: Path, target: Path, binary: bool) -> None:
    """A label in nnU-Net's convention (consecutive integers from 0): PNG masks stored 0/255 become 0/1."""
    if source.suffix.lower() == ".png":
        from PIL import Image

        array = np.asarray(Image.open(source).convert("L"))
        array = (array > 0) if binary else array
        Image.fromarray(array.astype(np.uint8)).save(target)
    else:
        _link(source, target)


def convert(
    dataset_dir: str | Path,
    raw_root: str | Path,
    dataset_id: int,
    name: str,
    channels: Mapping[int, str],
    classes: Mapping[int, str],
    training: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]],
) -> Path:
    """Write ``raw_root/DatasetNNN_name`` (images linked, labels linked or re-coded) and its ``dataset.json``.

    Training cases go to ``imagesTr``/``labelsTr`` as ``<case>_0000<ending>`` (one file per channel, or one RGB
    file), test images to ``imagesTs``. Returns the data set's folder.
    """
    dataset_dir = Path(dataset_dir)
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    ending = _ending(image_files(training[0])[0])
    for split, entries in (("Tr", training), ("Ts", test)):
        for entry in entries:
            case = case_name(entry)
            for k, image in enumerate(image_files(entry)):
                _link(dataset_dir / image, folder / f"images{split}" / f"{case}_{k:04d}{ending}")
            if split == "Tr":
                _write_label(dataset_dir / entry["label"], folder / "labelsTr" / f"{case}{ending}", len(classes) == 2)
    description = {
        "channel_names": {str(k): v for k, v in sorted(channels.items())},
        "labels": {("background" if k == 0 else v): k for k, v in sorted(classes.items())},
        "numTraining": len(training),
        "file_ending": ending,
        "name": name,
    }
    (folder / "dataset.json").write_text(json.dumps(description, indent=2))
    return folder


def plan_and_preprocess(dataset_id: int, configuration: str, processes: int = 2) -> dict[str, Any]:
    """nnU-Net's fingerprint (integrity verified), plans and preprocessing of one configuration; returns the plans."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    extract_fingerprints([dataset_id], num_processes=processes, check_dataset_integrity=True, verbose=False,
                         show_progress_bar=False)  # fmt: skip
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=(configuration,), num_processes=(processes,), show_progress_bar=False)
    folder = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(dataset_id)
    return json.loads((folder / "nnUNetPlans.json").read_text())


def budget_trainer_class() -> type:
    """nnU-Net's default trainer, stopped at a wall-clock budget with its poly schedule fitted to that budget."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class BudgetTrainer(nnUNetTrainer):
        """``nnUNetTrainer`` unchanged but for the stop: after every epoch the number of epochs is set to what fits
        ``budget_s`` at the rate so far (so the poly learning rate decays to about zero at the budget, as it would at
        epoch 1000), and training stops at the first iteration past the budget. Records (seconds, pseudo Dice)
        after every epoch."""

        budget_s: float = 60.0

        def run_training(self) -> None:
            """The default loop, timed from the first iteration (set-up excluded)."""
            self.on_train_start()
            start = time.perf_counter()
            deadline = start + self.budget_s
            self.curve: list[tuple[float, float]] = []
            self.iterations = 0
            while self.current_epoch < self.num_epochs:
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    outputs.append(self.train_step(next(self.dataloader_train)))
                    self.iterations += 1
                    if time.perf_counter() > deadline:
                        break
                self.on_train_epoch_end(outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    batches = range(self.num_val_iterations_per_epoch)
                    self.on_validation_epoch_end([self.validation_step(next(self.dataloader_val)) for _ in batches])
                elapsed = time.perf_counter() - start
                self.curve.append((elapsed, float(self.logger.get_value("mean_fg_dice", step=-1))))
                # fit the schedule: as many epochs as the budget holds at the rate so far
                fitted = max(self.current_epoch + 2, int(self.budget_s / (elapsed / (self.current_epoch + 1))))
                self.num_epochs = fitted
                self.lr_scheduler.max_steps = fitted
                self.on_epoch_end()
                if time.perf_counter() > deadline:
                    break
            self.train_seconds = time.perf_counter() - start
            self.on_train_end()

    return BudgetTrainer


def train(
    dataset_id: int,
    configuration: str,
    budget_s: float,
    iterations_per_epoch: int,
    val_iterations: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train fold 0 of nnU-Net's 5-fold split for ``budget_s`` seconds; the trained folder, curve and counts."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(dataset_id)
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # as nnunetv2.run.run_training passes it: a fresh run
    dataset_json = json.loads((folder / "dataset.json").read_text())
    trainer_class = budget_trainer_class()
    trainer_class.budget_s = float(budget_s)
    trainer = trainer_class(plans, configuration, 0, dataset_json, device=torch.device(device))
    trainer.num_iterations_per_epoch = int(iterations_per_epoch)
    trainer.num_val_iterations_per_epoch = int(val_iterations)
    trainer.run_training()
    return {
        "model_dir": str(Path(trainer.output_folder)),
        "checkpoint": str(Path(trainer.output_folder) / "checkpoint_final.pth"),
        "train_seconds": trainer.train_seconds,
        "epochs": trainer.current_epoch,
        "iterations": trainer.iterations,
        "curve": trainer.curve,
        "batch_size": trainer.configuration_manager.batch_size,
        "patch_size": list(trainer.configuration_manager.patch_size),
        "spacing": list(trainer.configuration_manager.spacing),
    }


def predict(
    dataset_id: int,
    checkpoint: str | Path,
    cases: Mapping[str, Sequence[str]],
    output_dir: str | Path,
    device: str = "cpu",
) -> dict[str, Path]:
    """Predict ``{case: [channel files]}`` with nnU-Net's predictor (its defaults: Gaussian-weighted windows at
    half overlap, mirroring test-time augmentation); returns ``{case: written label file}``."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(dataset_id)
    plans = PlansManager(json.loads((folder / "nnUNetPlans.json").read_text()))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    configuration = plans.get_configuration(state["init_args"]["configuration"])
    network = nnUNetTrainer.build_network_architecture(
        plans, configuration, determine_num_input_channels(plans, configuration, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False,
    )  # fmt: skip
    network.load_state_dict(state["network_weights"])
    predictor = nnUNetPredictor(device=torch.device(device), perform_everything_on_device=False, allow_tqdm=False)
    predictor.manual_initialization(
        network, plans, configuration, [state["network_weights"]], dataset_json, "nnUNetTrainer",
        state.get("inference_allowed_mirroring_axes"),
    )  # fmt: skip
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(cases)
    predictor.predict_from_files(
        [list(cases[n]) for n in names], [str(output_dir / n) for n in names], save_probabilities=False,
        overwrite=True, num_processes_preprocessing=1, num_processes_segmentation_export=1,
    )  # fmt: skip
    ending = dataset_json["file_ending"]
    return {n: output_dir / f"{n}{ending}" for n in names}
