"""Data lists for the bundles: the Decathlon-style ``dataset.json`` and input folders for inference."""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.misc import is_dicom

from common.tables import case_stem, write_json_atomic

logger = logging.getLogger(__name__)

#: keys of a data-list entry that hold file paths (``image`` may be a list of files, one per modality)
PATH_KEYS = ("image", "label", "mask")
#: a file stem ending in a four-digit channel index, ``<case>_0000`` (nnU-Net)
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
#: a data-list entry holding this key is refused with its message without being read (``ScreenedDataset``)
REFUSED_KEY = "refused"


def _absolute(entry: dict[str, Any], root: Path, source: Path) -> dict[str, Any]:
    """Return a copy of ``entry`` whose path keys are absolute, raising if a referenced file is missing.

    Other keys that hold lists or dicts (e.g. a synthetic case's list of tumours) are left out: a data loader
    cannot batch them when their lengths differ between cases. Scalars (``subject``, ``phase``, volumes) stay.
    """
    out = {k: v for k, v in entry.items() if k in PATH_KEYS or not isinstance(v, (list, tuple, dict))}
    for key in PATH_KEYS:
        if key not in entry:
            continue
        paths = entry[key] if isinstance(entry[key], (list, tuple)) else [entry[key]]
        resolved = [str(p if Path(p).is_absolute() else root / p) for p in paths]
        for path in resolved:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{source}: the {key} file {path} does not exist.")
        out[key] = resolved if isinstance(entry[key], (list, tuple)) else resolved[0]
    return out


def _group(entry: dict[str, Any]) -> str:
    """The hold-out unit of an entry: its ``subject`` when given (all frames of a patient stay together)."""
    return str(entry.get("subject") or entry.get("image"))


def _held_out_groups(cases: list[dict[str, Any]], val_fraction: float, seed: int) -> set[str]:
    """A fixed, seeded ``val_fraction`` of the distinct groups (subjects, or single cases) of ``cases``."""
    groups = sorted({_group(c) for c in cases})
    random.Random(seed).shuffle(groups)
    n_val = max(1, round(val_fraction * len(groups))) if len(groups) > 1 else 0
    return set(groups[:n_val])


def load_datalist(
    dataset_dir: str,
    split: str = "training",
    val_fraction: float = 0.2,
    seed: int = 0,
    require_label: bool = True,
) -> list[dict[str, Any]]:
    """Read one split of ``dataset_dir/dataset.json`` with absolute paths.

    ``split`` is ``training``, ``validation`` or ``test``. When ``dataset.json`` has no ``validation`` list, a
    fixed, seeded ``val_fraction`` of ``training`` is held out: ``training`` then returns the rest and
    ``validation`` the held-out cases, so the two never overlap. Entries with a ``subject`` key are held out by
    subject, so the frames of one patient (e.g. ED and ES) never fall on both sides. ``test`` falls back to the
    validation cases when the file has no labelled ``test`` list, so evaluation always has a labelled split.
    """
    source = Path(dataset_dir) / "dataset.json"
    if not source.is_file():
        raise FileNotFoundError(
            f"{source}: no dataset.json in dataset_dir {dataset_dir}; pass --dataset_dir with the folder that holds "
            f"it (the bundle's scripts/prepare_*.py write one from a public data set's layout)."
        )
    try:
        with open(source) as f:
            index = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not valid JSON ({e}).") from e
    if not index.get("training"):
        raise ValueError(f"{source}: the 'training' list is missing or empty.")
    entries = [e if isinstance(e, dict) else {"image": e} for e in index.get(split) or []]
    if split == "test" and require_label and not any("label" in e for e in entries):
        logger.info("%s: no labelled 'test' list, evaluating on the validation cases", source)
        split, entries = "validation", []
    if split in ("training", "validation") and not index.get("validation"):
        cases = list(index["training"])
        held_out = _held_out_groups(cases, val_fraction, seed)
        entries = [c for c in cases if (_group(c) in held_out) == (split == "validation")]
    elif split in ("training", "validation"):
        entries = list(index[split])
    if require_label:
        for entry in entries:
            if "label" not in entry:
                raise ValueError(f"{source}: the {split} case {entry.get('image')} has no 'label'.")
    return [_absolute(e, Path(dataset_dir), source) for e in entries]


def _channel_case(name: str, suffixes: Sequence[str]) -> tuple[str, int] | None:
    """``("case", 3)`` for a file named ``case_0003.<ext>`` (the nnU-Net channel convention), else None."""
    suffix = next(s for s in suffixes if name.lower().endswith(s))
    stem = name[: -len(suffix)]
    match = _CHANNEL.match(stem)
    return (match["case"] + suffix, int(match["channel"])) if match else None


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble) or ends in ``.dcm``."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        return is_dicom(path)
    except OSError:
        return False


def is_dicom_series_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding DICOM files directly (one series, read by ITK as one volume)."""
    return path.is_dir() and any(p.is_file() and is_dicom_file(p) for p in path.iterdir())


def list_images(
    input_dir: str, extensions: Sequence[str], group_channels: bool = False, series_folders: bool = False
) -> list[dict[str, Any]]:
    """List ``{"image": path}`` for every file in ``input_dir`` whose name ends with one of ``extensions``.

    With ``group_channels`` (multimodal bundles), files named ``<case>_<XXXX>.<ext>`` with a four-digit channel
    index are one case, ``{"image": [channel 0, channel 1, ...]}`` in channel order (the nnU-Net convention);
    any other file is a case of its own (e.g. one 4D file holding every modality). With ``series_folders`` (CT
    bundles), every subfolder holding DICOM files is a case too (``{"image": folder}``, one series per folder).
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: input_dir does not exist or is not a folder.")
    suffixes = tuple(e.lower() for e in extensions)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))
    series = sorted(p for p in folder.iterdir() if series_folders and is_dicom_series_folder(p))
    if not files and not series:
        kinds = ", ".join(suffixes) + (" or DICOM series folders" if series_folders else "")
        raise FileNotFoundError(f"{folder}: input_dir holds no images ending in {kinds}.")
    if not group_channels:
        return _refuse_shared_output_names([({"image": str(p)}, case_stem(p)) for p in sorted(files + series)])
    cases: dict[str, list[tuple[int, str]]] = {}
    singles = []
    for path in files:
        channel_case = _channel_case(path.name, suffixes)
        if channel_case is None:
            singles.append(({"image": str(path)}, case_stem(path)))
        else:
            cases.setdefault(channel_case[0], []).append((channel_case[1], str(path)))
    grouped = [(_channel_group(sorted(channels)), case_stem(name)) for name, channels in sorted(cases.items())]
    return _refuse_shared_output_names(sorted(grouped + singles, key=lambda named: _first_file(named[0])))


def _first_file(entry: dict[str, Any]) -> str:
    """The first file of a data-list entry (the first channel of a multimodal case)."""
    image = entry["image"]
    return str(image[0] if isinstance(image, list) else image)


def _channel_group(channels: list[tuple[int, str]]) -> dict[str, Any]:
    """The entry of a case given as ``<case>_XXXX`` files, refused when the channel numbers are not 0, 1, 2, ..."""
    entry: dict[str, Any] = {"image": [path for _, path in channels]}
    numbers = [number for number, _ in channels]
    if numbers != list(range(len(numbers))):
        missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
        found = ", ".join(f"_{n:04d}" for n in numbers)
        entry[REFUSED_KEY] = (
            f"{channels[0][1]}: the case's channel files are numbered {found}"
            + (f", without {', '.join(f'_{n:04d}' for n in missing)}" if missing else "")
            + f"; number them _0000 to _{len(numbers) - 1:04d} in the bundle's modality order."
        )
    return entry


def _refuse_shared_output_names(named: list[tuple[dict[str, Any], str]]) -> list[dict[str, Any]]:
    """The entries, with every group of inputs whose outputs would share a name (``case.png`` and ``case.jpg`` both
    give ``case_seg``) refused, each naming the others: writing one would silently replace the other."""
    by_stem: dict[str, list[dict[str, Any]]] = {}
    for entry, stem in named:
        by_stem.setdefault(stem, []).append(entry)
    for stem, entries in by_stem.items():
        if len(entries) > 1:
            names = [_first_file(e) for e in entries]
            for entry, name in zip(entries, names):
                others = ", ".join(n for n in names if n != name)
                entry.setdefault(
                    REFUSED_KEY,
                    f"{name}: gives the same output name ({stem}_seg) as {others}; rename one of them so that "
                    f"each case has its own name.",
                )
    return [entry for entry, _ in named]


def write_dataset_json(
    output_dir: str | os.PathLike,
    name: str,
    description: str,
    modality: dict[str, str],
    labels: dict[str, str],
    training: list[dict[str, Any]],
    test: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Path:
    """Write ``output_dir/dataset.json`` (Decathlon layout: counts, modality and label names, the case lists).

    Written atomically and meant to be written last, so a half-written data set never looks complete. ``extra``
    keys (e.g. ``tensorImageSize``) go into the index as they are. Returns the path of the file.
    """
    test = list(test or [])
    index = {
        "name": name,
        "description": description,
        **extra,
        "modality": dict(modality),
        "labels": dict(labels),
        "numTraining": len(training),
        "numTest": len(test),
        "training": list(training),
        "test": test,
    }
    path = Path(output_dir) / "dataset.json"
    write_json_atomic(path, index)
    return path


def save_nifti(data: np.ndarray, affine: np.ndarray, path: str | Path) -> None:
    """Save one NIfTI volume at ``path`` with its units (mm, seconds), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nifti = nib.Nifti1Image(data, affine)
    nifti.header.set_xyzt_units("mm", "sec")
    nib.save(nifti, path)


def write_prepared(
    output_dir: str | os.PathLike,
    dataset: dict[str, Any],
    training: list[dict[str, Any]],
    test: list[dict[str, Any]] | None = None,
) -> str:
    """Write the ``dataset.json`` of a converted public data set (``dataset`` gives its ``name``, ``description``,
    ``modality``, ``labels`` and any extra index keys), print what was converted, and return the index's path."""
    info = dict(dataset)
    name, description, modality, labels = (info.pop(k) for k in ("name", "description", "modality", "labels"))
    path = write_dataset_json(output_dir, name, description, modality, labels, training, test, **info)
    test = list(test or [])
    labelled = sum("label" in e for e in test)
    print(f"{name}: {len(training)} training and {len(test)} test cases ({labelled} of them labelled) -> {path}")
    return str(path)
