"""Clinical indices of cardiac segmentations: voxel and class volumes, ejection fractions and myocardial mass.

Label maps follow the ACDC convention: 0 background, 1 right-ventricle (RV) cavity, 2 left-ventricle (LV)
myocardium, 3 LV cavity. Volumes are in millilitres (mL = cm^3 = 1000 mm^3), ejection fractions in percent
and masses in grams; every key of a returned dict carries its unit as a suffix (``_ml``, ``_percent``, ``_g``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from monai.utils import convert_to_numpy

__all__ = [
    "ACDC_CLASSES",
    "MYOCARDIUM_DENSITY_G_PER_ML",
    "cardiac_indices",
    "ejection_fraction",
    "indices_from_volumes",
    "label_volumes_ml",
    "voxel_volume_ml",
]

#: ACDC label indices by structure
ACDC_CLASSES = {"rv": 1, "myo": 2, "lv": 3}
#: density of myocardial tissue (g/mL) conventionally used to turn myocardial volume into mass
MYOCARDIUM_DENSITY_G_PER_ML = 1.05


def _numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """numpy copy of a numpy array, torch tensor, MONAI MetaTensor or nested sequence."""
    return np.asarray(convert_to_numpy(x, wrap_sequence=True), dtype=dtype)


def voxel_volume_ml(affine_or_spacing: Any) -> float:
    """Volume of one voxel in mL, from a 4x4 affine (mm) or a sequence of 3 voxel sizes (mm).

    For an affine the volume is ``|det(A[:3, :3])| / 1000``, so rotations, flips and obliquity of the grid do not
    change it; for a spacing it is the product of the three sizes / 1000. numpy arrays, torch tensors (e.g. a
    MetaTensor's ``affine``) and plain sequences are accepted.

    Raises:
        ValueError: when the input is neither a 4x4 matrix nor 3 voxel sizes, or when the volume is not finite.
    """
    values = _numpy(affine_or_spacing, np.float64)
    if values.shape == (4, 4):
        volume = abs(float(np.linalg.det(values[:3, :3]))) / 1000.0
    elif values.shape == (3,):
        volume = abs(float(np.prod(values))) / 1000.0
    else:
        raise ValueError(f"expected a 4x4 affine or 3 voxel sizes in mm, got shape {tuple(values.shape)}")
    if not math.isfinite(volume):
        raise ValueError(f"the voxel volume of {values.tolist()} is not finite")
    return volume


def label_volumes_ml(label: Any, voxel_ml: float, classes: Mapping[str, int]) -> dict[str, float]:
    """Volume in mL of each named class of a label map: ``{name: count(label == index) * voxel_ml}``.

    ``label`` is a numpy array or torch tensor of integer labels of any shape (a channel dimension of size 1 is
    fine); floating-point labels are rounded to the nearest integer first. The returned keys are those of
    ``classes``, e.g. ``label_volumes_ml(seg, 0.0125, ACDC_CLASSES)`` gives ``{"rv": ..., "myo": ..., "lv": ...}``.
    """
    values = _numpy(label)
    if np.issubdtype(values.dtype, np.floating):
        values = np.rint(values)
    return {name: int(np.count_nonzero(values == index)) * float(voxel_ml) for name, index in classes.items()}


def ejection_fraction(edv: float, esv: float) -> float:
    """Ejection fraction in percent, ``100 * (EDV - ESV) / EDV``; NaN when EDV <= 0 or either volume is NaN."""
    edv, esv = float(edv), float(esv)
    if not edv > 0:  # also catches NaN
        return math.nan
    return 100.0 * (edv - esv) / edv


def _voxel_ml(value: Any) -> float:
    """A voxel volume in mL given as a number, or as an affine / spacing passed to ``voxel_volume_ml``."""
    return float(value) if np.ndim(value) == 0 else voxel_volume_ml(value)


def indices_from_volumes(
    ed: Mapping[str, float], es: Mapping[str, float], myocardium_density: float = MYOCARDIUM_DENSITY_G_PER_ML
) -> dict[str, float]:
    """Ventricular volumes, stroke volumes, ejection fractions and myocardial mass from ED and ES class volumes.

    Args:
        ed: end-diastolic volumes in mL with keys ``lv`` (LV cavity), ``rv`` (RV cavity) and ``myo`` (LV
            myocardium), as returned by ``label_volumes_ml(label, voxel_ml, ACDC_CLASSES)``.
        es: end-systolic volumes, same keys.
        myocardium_density: g/mL, 1.05 by default.

    Returns:
        A dict of Python floats:

        - ``lv_edv_ml``, ``lv_esv_ml``: LV cavity volume at ED and ES (mL);
        - ``lv_sv_ml``: LV stroke volume, EDV - ESV (mL);
        - ``lv_ef_percent``: LV ejection fraction, 100 * SV / EDV (%; NaN when the ED LV cavity is empty);
        - ``rv_edv_ml``, ``rv_esv_ml``, ``rv_sv_ml``, ``rv_ef_percent``: the same for the RV cavity;
        - ``myo_mass_ed_g``, ``myo_mass_es_g``: LV myocardial volume at ED and ES times ``myocardium_density`` (g).
    """
    out: dict[str, float] = {}
    for chamber in ("lv", "rv"):
        edv, esv = float(ed[chamber]), float(es[chamber])
        out[f"{chamber}_edv_ml"] = edv
        out[f"{chamber}_esv_ml"] = esv
        out[f"{chamber}_sv_ml"] = edv - esv
        out[f"{chamber}_ef_percent"] = ejection_fraction(edv, esv)
    out["myo_mass_ed_g"] = float(ed["myo"]) * float(myocardium_density)
    out["myo_mass_es_g"] = float(es["myo"]) * float(myocardium_density)
    return out


def cardiac_indices(
    ed_label: Any,
    es_label: Any,
    ed_voxel_ml: Any,
    es_voxel_ml: Any,
    myocardium_density: float = MYOCARDIUM_DENSITY_G_PER_ML,
) -> dict[str, float]:
    """Ventricular volumes, ejection fractions and myocardial mass straight from ED and ES label maps.

    ``ed_label`` and ``es_label`` hold ACDC labels (any shape; the two frames may have different grids);
    ``ed_voxel_ml`` and ``es_voxel_ml`` are each frame's voxel volume in mL, or an affine / spacing in mm passed to
    ``voxel_volume_ml``. Returns the keys of ``indices_from_volumes``.
    """
    ed = label_volumes_ml(ed_label, _voxel_ml(ed_voxel_ml), ACDC_CLASSES)
    es = label_volumes_ml(es_label, _voxel_ml(es_voxel_ml), ACDC_CLASSES)
    return indices_from_volumes(ed, es, myocardium_density)
