"""Copy the ACDC cardiac cine MR data set from its download layout into a Decathlon-style ``dataset.json`` layout.

ACDC (Automated Cardiac Diagnosis Challenge, https://www.creatis.insa-lyon.fr/Challenge/acdc) unpacks as::

    ACDC/database/training/patient001/Info.cfg                    ED: 1, ES: 12, Group: DCM, Height: 184.0, ...
    ACDC/database/training/patient001/patient001_4d.nii.gz        the whole cine sequence (not used)
    ACDC/database/training/patient001/patient001_frame01.nii.gz   one frame (1-based, two digits), short-axis stack
    ACDC/database/training/patient001/patient001_frame01_gt.nii.gz  its label: 0 bg, 1 RV, 2 myocardium, 3 LV
    ACDC/database/testing/patient101/...                           same layout, patients 101..150

``acdc_dir`` may be ``ACDC``, ``database``, a folder holding ``training``/``testing``, or a folder of ``patientXXX``
folders (a ``testing`` folder then counts as the test split, any other as training). The end-diastolic and
end-systolic frames named in each ``Info.cfg`` go, image and label unchanged (ACDC's labels are ours), to
``imagesTr/patientXXX_ED.nii.gz``, ``labelsTr/patientXXX_ED.nii.gz`` (``_ES`` likewise; testing: ``imagesTs``,
``labelsTs``). Each entry also carries ``subject``, ``phase`` and, when ``Info.cfg`` has them, ``group``,
``height_cm`` and ``weight_kg``. A testing frame without ``_gt`` gets no label; ``dataset.json`` is written last.

Command line::

    python bundles/cardiac_mr_fcn/scripts/prepare_acdc.py --acdc_dir /data/ACDC --output_dir /data/acdc_msd
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import fire

from common.data import write_prepared

#: our split names, ACDC's split folders and the suffix of the output folders
SPLITS = {"training": ("training", "Tr"), "test": ("testing", "Ts")}
#: the cardiac phases taken from each patient, as named in ``Info.cfg``
PHASES = ("ED", "ES")
#: optional ``Info.cfg`` fields copied into the entries: ``Info.cfg`` key -> (entry key, type)
EXTRA_FIELDS = {"Group": ("group", str), "Height": ("height_cm", float), "Weight": ("weight_kg", float)}
_PATIENT = re.compile(r"^patient\d+$")


#: the converted data set's index entries
DATASET = {
    "name": "ACDC",
    "description": "ACDC: Automated Cardiac Diagnosis Challenge (MICCAI 2017), short-axis cine MR, "
    "end-diastolic (ED) and end-systolic (ES) frames.",
    "modality": {"0": "MRI"},
    "labels": {"0": "background", "1": "RV cavity", "2": "LV myocardium", "3": "LV cavity"},
}


def _patient_dirs(folder: Path) -> list[Path]:
    """The ``patientXXX`` folders directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and _PATIENT.match(p.name))


def find_split_dirs(acdc_dir: str | Path) -> dict[str, Path]:
    """Map ``training``/``test`` to the folders of ``patientXXX`` folders found under ``acdc_dir``.

    Raises FileNotFoundError when neither split folders nor patient folders are found.
    """
    acdc_dir = Path(acdc_dir)
    candidates = [acdc_dir, acdc_dir / "database", acdc_dir / "ACDC" / "database", acdc_dir / "ACDC"]
    candidates = [c for c in candidates if c.is_dir()]
    for root in candidates:
        splits = {split: root / folder for split, (folder, _) in SPLITS.items() if (root / folder).is_dir()}
        if splits:
            return splits
    for root in candidates:
        if _patient_dirs(root):
            return {"test" if root.name == SPLITS["test"][0] else "training": root}
    raise FileNotFoundError(
        f"ACDC: no training/ or testing/ folder and no patientXXX folders in {acdc_dir} (or its database/ subfolder)."
    )


def read_info(path: str | Path) -> dict[str, Any]:
    """Parse a patient's ``Info.cfg``: ``ED`` and ``ES`` as frame numbers, plus ``group``, ``height_cm``, ``weight_kg``.

    Raises FileNotFoundError when the file is missing, ValueError when ED or ES is missing or not a frame number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ACDC: the patient information file {path} does not exist.")
    fields = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    info: dict[str, Any] = {}
    for phase in PHASES:
        if not fields.get(phase):
            raise ValueError(f"ACDC: {path} has no '{phase}:' line naming the {phase} frame.")
        try:
            info[phase] = int(fields[phase])
        except ValueError:
            raise ValueError(f"ACDC: {path}: '{phase}: {fields[phase]}' is not a frame number.") from None
    for key, (name, kind) in EXTRA_FIELDS.items():
        if fields.get(key):
            try:
                info[name] = kind(fields[key])
            except ValueError:
                raise ValueError(f"ACDC: {path}: '{key}: {fields[key]}' is not a number.") from None
    return info


def _patient_cases(patient_dir: Path, split: str) -> list[dict[str, Any]]:
    """Source files and metadata of one patient's ED and ES frames: image always, label unless missing in testing.

    Raises FileNotFoundError when a frame image, or a training frame's ``_gt`` label, is missing.
    """
    info = read_info(patient_dir / "Info.cfg")
    subject = patient_dir.name
    extras = {name: info[name] for name, _ in EXTRA_FIELDS.values() if name in info}
    cases = []
    for phase in PHASES:
        frame = f"{subject}_frame{info[phase]:02d}"
        image = patient_dir / f"{frame}.nii.gz"
        label = patient_dir / f"{frame}_gt.nii.gz"
        if not image.is_file():
            raise FileNotFoundError(f"ACDC: the {phase} frame image {image} (named in Info.cfg) is missing.")
        case: dict[str, Any] = {"image": image}
        if label.is_file():
            case["label"] = label
        elif split == "training":
            raise FileNotFoundError(f"ACDC: the {phase} label {label} of training patient {subject} is missing.")
        cases.append({"files": case, "subject": subject, "phase": phase, **extras})
    return cases


def _copy_case(case: dict[str, Any], output_dir: Path, tag: str) -> dict[str, Any]:
    """Copy one frame's files to ``images<tag>/`` and ``labels<tag>/`` as ``<subject>_<phase>``; return its entry."""
    entry: dict[str, Any] = {}
    for key, source in case["files"].items():
        relative = f"{key}s{tag}/{case['subject']}_{case['phase']}.nii.gz"
        (output_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, output_dir / relative)
        entry[key] = relative
    entry.update({k: v for k, v in case.items() if k != "files"})
    return entry


def prepare_acdc(acdc_dir: str, output_dir: str) -> str:
    """Copy ACDC's ED and ES frames into ``output_dir`` with a Decathlon-style ``dataset.json``; return its path."""
    split_dirs = find_split_dirs(acdc_dir)
    cases: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for split, folder in split_dirs.items():  # check everything before copying anything
        for patient_dir in _patient_dirs(folder):
            cases[split] += _patient_cases(patient_dir, split)
    if not any(cases.values()):
        raise FileNotFoundError(f"ACDC: no patientXXX folders in {', '.join(map(str, split_dirs.values()))}.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = {split: [_copy_case(case, out, SPLITS[split][1]) for case in cases[split]] for split in SPLITS}
    return write_prepared(out, DATASET, entries["training"], entries["test"])


if __name__ == "__main__":
    fire.Fire(prepare_acdc)
