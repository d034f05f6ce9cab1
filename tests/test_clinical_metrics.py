"""Clinical indices (common.metrics.clinical) against volumes computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.metrics.clinical import (
    ACDC_CLASSES,
    cardiac_indices,
    ejection_fraction,
    indices_from_volumes,
    label_volumes_ml,
    voxel_volume_ml,
)


def test_voxel_volume_from_spacing_and_oblique_affines():
    assert voxel_volume_ml([1.25, 1.25, 8.0]) == pytest.approx(0.0125)
    theta = 0.3
    rotation = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.5, 1.5, 10.0])  # rotated and flipped: volume unchanged
    affine[:3, 3] = [12.0, -40.0, 7.0]
    assert voxel_volume_ml(affine) == pytest.approx(0.0225)
    assert voxel_volume_ml(torch.as_tensor(affine)) == pytest.approx(0.0225)
    with pytest.raises(ValueError, match="4x4 affine or 3 voxel sizes"):
        voxel_volume_ml([1.0, 2.0])


def test_label_volumes_count_each_class():
    label = np.zeros((1, 4, 5, 3), np.uint8)
    label[0, :2, :2, 0] = 1  # 4 RV voxels
    label[0, 2:, :, 1] = 2  # 10 myocardium voxels
    label[0, 0, 0, 2] = 3  # 1 LV voxel
    volumes = label_volumes_ml(label, 0.5, ACDC_CLASSES)
    assert volumes == {"rv": 2.0, "myo": 5.0, "lv": 0.5}
    assert label_volumes_ml(torch.as_tensor(label, dtype=torch.float32) + 0.01, 0.5, {"lv": 3}) == {"lv": 0.5}


def test_ejection_fraction_and_its_undefined_cases():
    assert ejection_fraction(120.0, 50.0) == pytest.approx(100 * 70 / 120)
    assert math.isnan(ejection_fraction(0.0, 0.0))
    assert math.isnan(ejection_fraction(float("nan"), 10.0))


def test_indices_from_label_maps_match_hand_computed_values():
    # ED: LV cavity 30 voxels, myocardium 20, RV 25; ES: LV 12, myocardium 22, RV 15. Voxels 2 x 2 x 5 mm = 0.02 mL.
    def label_map(lv: int, myo: int, rv: int) -> np.ndarray:
        flat = np.zeros(200, np.uint8)
        flat[:lv] = 3
        flat[lv : lv + myo] = 2
        flat[lv + myo : lv + myo + rv] = 1
        return flat.reshape(10, 4, 5)

    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    out = cardiac_indices(label_map(30, 20, 25), label_map(12, 22, 15), affine, [2.0, 2.0, 5.0])
    assert out["lv_edv_ml"] == pytest.approx(0.60)
    assert out["lv_esv_ml"] == pytest.approx(0.24)
    assert out["lv_sv_ml"] == pytest.approx(0.36)
    assert out["lv_ef_percent"] == pytest.approx(60.0)
    assert out["rv_edv_ml"] == pytest.approx(0.50)
    assert out["rv_ef_percent"] == pytest.approx(40.0)
    assert out["myo_mass_ed_g"] == pytest.approx(0.40 * 1.05)
    assert out["myo_mass_es_g"] == pytest.approx(0.44 * 1.05)
    same = indices_from_volumes({"lv": 0.6, "rv": 0.5, "myo": 0.4}, {"lv": 0.24, "rv": 0.3, "myo": 0.44})
    assert same == pytest.approx(out)


def test_frames_on_different_grids():
    # the same 10 mL LV cavity sampled on 1 mm^3 voxels (ED) and 2 x 2 x 2.5 mm voxels (ES, 1000 voxels)
    ed = np.zeros((25, 20, 20), np.uint8)
    ed[:, :20, :20] = 3  # 10000 voxels x 0.001 mL
    es = np.zeros((10, 10, 12), np.uint8)
    es[:, :, :10] = 3  # 1000 voxels x 0.01 mL
    out = cardiac_indices(ed, es, 0.001, [2.0, 2.0, 2.5])
    assert out["lv_edv_ml"] == pytest.approx(10.0) and out["lv_esv_ml"] == pytest.approx(10.0)
    assert out["lv_ef_percent"] == pytest.approx(0.0)
    assert math.isnan(out["rv_ef_percent"])  # no RV in either frame
