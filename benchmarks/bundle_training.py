"""A bundle's ``train.json`` run in this process for a wall-clock budget, optionally stopped when its validation first
reaches a target: the learning curve (validation key metric against training seconds) and the time to the target.

Used by the peers benchmark (the bundle trained for nnU-Net's budget) and the speed benchmark (``time_to_target``).
The config is the shipped one: its caching, loader workers, validation interval and checkpoint saving; the budget is
``ignite.handlers.TimeLimit``, the clock starts at the first iteration (dataset caching is timed apart).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def train_for(
    root: str | Path,
    values: Mapping[str, Any],
    budget_s: float,
    target: float | None = None,
    fit_schedule: bool = False,
) -> dict[str, Any]:
    """Train the bundle at ``root`` with ``values`` set (``dataset_dir``, ``output_dir``, ``ckpt_path``, ...).

    Stops at ``budget_s`` seconds of training or, with ``target``, at the first validation whose key metric reaches
    it. ``fit_schedule``: the number of epochs (and the ``T_max`` of a cosine ``lr_scheduler``) is re-estimated after
    every epoch as what the budget holds at the rate so far, so the schedule ends at the budget as it would end at
    ``max_epochs``; otherwise ``max_epochs`` is the config's (or ``values``'). Returns ``train_seconds``,
    ``setup_s`` (parsing, caching), ``epochs``, ``iterations``, ``curve`` ([seconds, metric] per validation),
    ``time_to_target_s`` (None if not reached) and ``checkpoint`` (the best model, or the last weights where no
    validation ran).
    """
    from ignite.engine import Events
    from ignite.handlers import TimeLimit
    from monai.bundle import ConfigParser

    root = Path(root).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the configs import the bundle's own code as ``scripts``, as MONAI's run does
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser["bundle_root"] = str(root)
    for key, value in values.items():
        parser[key] = value
    start = time.perf_counter()
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")  # builds the cached datasets
    evaluator = parser.get_parsed_content("validate#evaluator")
    parser.get_parsed_content("train#checkpoint_saver").attach(trainer)
    setup_s = time.perf_counter() - start
    curve: list[tuple[float, float]] = []
    clock: dict[str, Any] = {"reached": None}

    def started(_: Any) -> None:
        clock["start"] = time.perf_counter()

    def validated(engine: Any) -> None:
        metric = float(engine.state.metrics[engine.state.key_metric_name])
        curve.append((time.perf_counter() - clock["start"], metric))
        if target is not None and clock["reached"] is None and metric >= target:
            clock["reached"] = curve[-1][0]
            trainer.terminate()

    def refit(engine: Any) -> None:
        rate = (time.perf_counter() - clock["start"]) / engine.state.epoch
        fitted = max(engine.state.epoch + 2, int(budget_s / rate))  # the time limit ends the run
        engine.state.max_epochs = fitted
        if scheduler is not None and hasattr(scheduler, "T_max"):
            scheduler.T_max = fitted

    scheduler = parser.get_parsed_content("lr_scheduler") if "lr_scheduler" in parser else None
    if fit_schedule:
        trainer.state.max_epochs = 1_000_000  # until the first refit
        trainer.add_event_handler(Events.EPOCH_COMPLETED, refit)
    trainer.add_event_handler(Events.STARTED, started)
    evaluator.add_event_handler(Events.COMPLETED, validated)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(limit_sec=max(1, int(math.ceil(budget_s)))))
    trainer.run()
    ckpt = Path(parser.get_parsed_content("ckpt_path"))
    if not ckpt.is_file():  # no validation in the budget: the last weights
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(parser.get_parsed_content("ckpt_dir")) / "checkpoint_final.pt", ckpt)
    return {
        "train_seconds": time.perf_counter() - clock["start"],
        "setup_s": setup_s,
        "epochs": trainer.state.epoch,
        "iterations": trainer.state.iteration,
        "curve": curve,
        "time_to_target_s": clock["reached"],
        "checkpoint": str(ckpt),
    }
