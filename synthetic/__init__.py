"""Synthetic phantoms for every task, one module per task with one interface, shared by tests, demos and benchmarks.

Each task module (``synthetic.<task>``) defines ``write_dataset(output_dir, num_train, num_test, seed, **options)``
that writes images, labels and a Decathlon-style ``dataset.json`` and returns the path of that file, and
``write_inputs(folder, count, seed, **options)`` that writes unlabelled inputs for inference. From a shell::

    python -m synthetic TASK --output_dir DIR --num_train N --num_test M --seed S [--size ...]

A bundle names its task in ``tooling.json`` (read by ``common.profile``); a new task is a new module here.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any

#: modules of this package that are not task generators
_NOT_TASKS = {"fields", "demo", "__main__"}


def tasks() -> list[str]:
    """The names of the tasks that have a generator."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in _NOT_TASKS)


def generator(task: str) -> ModuleType:
    """The generator module of ``task``; a ``ValueError`` naming the known tasks if there is none."""
    if task not in tasks():
        raise ValueError(f"no synthetic generator for task {task!r}; known tasks: {', '.join(tasks())}")
    return importlib.import_module(f"{__name__}.{task}")


def write_dataset(
    task: str, output_dir: str | Path, num_train: int, num_test: int, seed: int = 0, **options: Any
) -> str:
    """Write a synthetic data set of ``task`` (``options`` go to its generator, e.g. ``size``); return the path of
    its ``dataset.json``."""
    return generator(task).write_dataset(str(output_dir), num_train=num_train, num_test=num_test, seed=seed, **options)
