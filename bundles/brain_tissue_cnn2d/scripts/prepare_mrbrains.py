"""Convert the MRBrainS18 brain MR training data from its download layout into a Decathlon-style layout.

MRBrainS18 (Grand Challenge on MR Brain Segmentation at MICCAI 2018, https://mrbrains18.isi.uu.nl) unpacks as::

    MRBrainS18/training/1/pre/reg_T1.nii.gz   3D T1, bias-corrected, registered to the FLAIR (as the label is)
    MRBrainS18/training/1/pre/reg_IR.nii.gz   T1-weighted inversion recovery, registered to the FLAIR
    MRBrainS18/training/1/pre/FLAIR.nii.gz    T2 FLAIR (0.958 x 0.958 x 3 mm, 48 axial slices)
    MRBrainS18/training/1/pre/T1.nii.gz, IR.nii.gz     the same scans before registration (not used when reg_ exist)
    MRBrainS18/training/1/orig/...            the scans before bias correction (not used)
    MRBrainS18/training/1/segm.nii.gz         the manual label, in the FLAIR's grid
    MRBrainS18/training/4, 5, 7, 14, 070, 148 the other six training subjects

``mrbrains_dir`` may be the folder holding ``training/`` or the folder that directly holds the numbered subject
folders. Each modality is looked up in ``pre/`` by its registered name first: T1 as ``reg_T1.nii.gz``, then
``T1.nii.gz``; T1_IR as ``reg_IR.nii.gz``, then ``T1_IR.nii.gz``, ``IR.nii.gz``; FLAIR as ``FLAIR.nii.gz``; any
other name ``X`` as ``reg_X.nii.gz``, then ``X.nii.gz``. The modalities are copied unchanged, in the order of
``modalities``, to ``imagesTr/<subject>_0000.nii.gz``, ``_0001``, ... (the nnU-Net channel convention).

MRBrainS18's labels are 0 background, 1 cortical grey matter, 2 basal ganglia, 3 white matter, 4 white matter
lesions, 5 extracerebral cerebrospinal fluid, 6 ventricles, 7 cerebellum, 8 brain stem, 9 infarction, 10 other.
They are mapped to ours as in the MRBrainS13 three-class evaluation protocol: CSF (1) <- 5, 6; grey matter (2) <-
1, 2; white matter (3) <- 3, 4; background (0) <- 0, 7, 8 (cerebellum and brain stem are excluded from the tissue
classes, as in MRBrainS13), 9, 10 (infarction and "other" lesions belong to no healthy tissue class). The mapped
label is written as uint8 ``labelsTr/<subject>.nii.gz`` with the original affine and header. Entries carry
``subject``; the challenge's test labels are not public, so every subject is a training case.

Every subject is checked before anything is written (a missing modality or ``segm.nii.gz``: FileNotFoundError; a
modality or label whose shape differs from the first modality's, or a label value outside 0..10: ValueError; each
naming the files), and ``dataset.json`` is written last.

Command line::

    python bundles/brain_tissue_cnn2d/scripts/prepare_mrbrains.py --mrbrains_dir /data/MRBrainS18 \\
        --output_dir /data/mrbrains_msd
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import nibabel as nib
import numpy as np

from common.data import write_prepared

#: MRBrainS18 label -> ours (0 bg, 1 CSF, 2 GM, 3 WM), indexed by the MRBrainS18 label 0..10
LABEL_MAP = np.array([0, 2, 2, 3, 3, 1, 1, 0, 0, 0, 0], np.uint8)
MRBRAINS_LABELS = (
    "background",
    "cortical grey matter",
    "basal ganglia",
    "white matter",
    "white matter lesions",
    "cerebrospinal fluid",
    "ventricles",
    "cerebellum",
    "brain stem",
    "infarction",
    "other",
)
LABELS = {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}
MODALITIES = ("T1", "T1_IR", "FLAIR")
#: file names tried in ``<subject>/pre/`` for each modality, the one registered to the label's grid first
MODALITY_FILES = {
    "T1": ("reg_T1.nii.gz", "T1.nii.gz"),
    "T1_IR": ("reg_IR.nii.gz", "T1_IR.nii.gz", "IR.nii.gz"),
    "FLAIR": ("FLAIR.nii.gz",),
}
LABEL_FILE = "segm.nii.gz"
_SUBJECT = re.compile(r"^\d+$")


#: the converted data set's index entries (the modality names are the ones converted)
DATASET = {
    "name": "MRBrainS18",
    "description": "MRBrainS18: Grand Challenge on MR Brain Segmentation (MICCAI 2018), training subjects; "
    "labels mapped to CSF (5, 6), grey matter (1, 2), white matter (3, 4), the rest background.",
    "tensorImageSize": "3D",
}


def _subject_dirs(folder: Path) -> list[Path]:
    """The numbered subject folders directly inside ``folder``, in numeric order."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and _SUBJECT.match(p.name)), key=lambda p: int(p.name))


def find_subject_dirs(mrbrains_dir: str | Path) -> list[Path]:
    """The subject folders of ``mrbrains_dir/training`` or, failing that, of ``mrbrains_dir`` itself.

    Raises FileNotFoundError when neither holds numbered subject folders.
    """
    root = Path(mrbrains_dir)
    for folder in (root / "training", root):
        if folder.is_dir() and _subject_dirs(folder):
            return _subject_dirs(folder)
    raise FileNotFoundError(
        f"MRBrainS: no training/ folder and no numbered subject folders (1, 4, 070, ...) in {root}."
    )


def modality_file(subject_dir: Path, modality: str) -> Path:
    """The file of ``modality`` in ``subject_dir/pre``: the first of its candidate names that exists.

    Raises FileNotFoundError naming every candidate when none exists.
    """
    names = MODALITY_FILES.get(modality, (f"reg_{modality}.nii.gz", f"{modality}.nii.gz"))
    candidates = [subject_dir / "pre" / name for name in names]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"MRBrainS: the {modality} image of subject {subject_dir.name} is missing: no "
        + " or ".join(map(str, candidates))
        + "."
    )


def map_labels(segm: np.ndarray, path: str | Path = "segm") -> np.ndarray:
    """Our uint8 labels (0 bg, 1 CSF, 2 GM, 3 WM) from an MRBrainS18 label array; ValueError on values not in 0..10."""
    values = np.unique(segm)
    bad = [v for v in values if not (float(v).is_integer() and 0 <= v < len(LABEL_MAP))]
    if bad:
        raise ValueError(f"MRBrainS: {path} holds label values {bad[:5]} outside the MRBrainS18 labels 0..10.")
    return LABEL_MAP[np.asarray(segm).astype(np.int64)]


def _subject_case(subject_dir: Path, modalities: Sequence[str]) -> dict[str, Any]:
    """Check one subject's files (present, equal shapes, valid labels); return its source files.

    Raises FileNotFoundError for a missing modality or label file, ValueError for a shape mismatch or a bad label.
    """
    images = [modality_file(subject_dir, m) for m in modalities]
    label = subject_dir / LABEL_FILE
    if not label.is_file():
        raise FileNotFoundError(f"MRBrainS: the label {label} of subject {subject_dir.name} is missing.")
    shapes = {}
    for path in images + [label]:
        try:
            shapes[path] = nib.load(path).shape[:3]
        except Exception as e:
            raise ValueError(f"MRBrainS: {path} is not a readable NIfTI file ({e}).") from e
    for path in images[1:] + [label]:
        if shapes[path] != shapes[images[0]]:
            raise ValueError(
                f"MRBrainS: {path} has shape {shapes[path]} but {images[0]} has shape {shapes[images[0]]}: "
                "the modalities and the label of a subject must share one grid."
            )
    map_labels(np.asarray(nib.load(label).dataobj), label)
    return {"subject": subject_dir.name, "images": images, "label": label}


def _write_label(source: Path, target: Path) -> None:
    """Write ``source``'s labels mapped to ours as uint8, with its affine and header."""
    segm = nib.load(source)
    header = segm.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    nifti = nib.Nifti1Image(map_labels(np.asarray(segm.dataobj), source), segm.affine, header)
    nifti.set_data_dtype(np.uint8)
    nib.save(nifti, target)


def _copy_case(case: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """Copy one subject's modalities and write its mapped label; return its ``dataset.json`` entry."""
    subject = case["subject"]
    image = [f"imagesTr/{subject}_{channel:04d}.nii.gz" for channel in range(len(case["images"]))]
    for source, relative in zip(case["images"], image):
        (output_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, output_dir / relative)
    label = f"labelsTr/{subject}.nii.gz"
    (output_dir / label).parent.mkdir(parents=True, exist_ok=True)
    _write_label(case["label"], output_dir / label)
    return {"image": image, "label": label, "subject": subject}


def prepare_mrbrains(mrbrains_dir: str, output_dir: str, modalities: Sequence[str] = MODALITIES) -> str:
    """Convert MRBrainS18's training subjects into ``output_dir`` with a Decathlon-style ``dataset.json``."""
    modalities = [modalities] if isinstance(modalities, str) else [str(m) for m in modalities]
    if not modalities:
        raise ValueError("MRBrainS: at least one modality is needed.")
    cases = [_subject_case(d, modalities) for d in find_subject_dirs(mrbrains_dir)]  # check all before writing
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = [_copy_case(case, out) for case in cases]
    modality = {str(i): name for i, name in enumerate(modalities)}
    return write_prepared(out, {**DATASET, "modality": modality, "labels": LABELS}, entries)


if __name__ == "__main__":
    fire.Fire(prepare_mrbrains)
