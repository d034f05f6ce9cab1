"""The shared package's data lists, input checks, screened dataset, atomic saving and per-case tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor, get_track_meta
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Flipd,
    KeepLargestConnectedComponentd,
    Lambdad,
    LoadImaged,
    ScaleIntensityRangePercentilesd,
)
from PIL import Image

from common.data import is_dicom_file, list_images, load_datalist
from common.handlers import CaseTableWriter, PruneCheckpoints
from common.screening import ScreenedDataset
from common.tables import case_stem, summarize, write_csv_atomic
from common.transforms import (
    ArgMaxd,
    AtomicSaveImaged,
    BackgroundOutsided,
    BoundingBoxd,
    CentreLabeld,
    CheckHounsfieldd,
    CheckImaged,
    ComposeWithoutMeta,
    KeepLargestComponentd,
    NormalizeInHeadd,
    PartitionPercentilesd,
    RemoveSmallComponentsd,
    head_mask,
    multimodal_case_path,
)


def write_index(root: Path, n: int, extra: dict | None = None) -> None:
    """A dataset.json with n training cases whose files exist."""
    for i in range(n):
        (root / f"img{i}.png").write_bytes(b"x")
        (root / f"lab{i}.png").write_bytes(b"x")
    index = {"training": [{"image": f"img{i}.png", "label": f"lab{i}.png"} for i in range(n)], **(extra or {})}
    (root / "dataset.json").write_text(json.dumps(index))


def test_held_out_split_is_seeded_disjoint_and_complete(tmp_path):
    write_index(tmp_path, 10)
    train = load_datalist(str(tmp_path), "training", val_fraction=0.2, seed=3)
    val = load_datalist(str(tmp_path), "validation", val_fraction=0.2, seed=3)
    assert len(train) == 8 and len(val) == 2
    names = {Path(c["image"]).name for c in train} | {Path(c["image"]).name for c in val}
    assert len(names) == 10
    assert val == load_datalist(str(tmp_path), "validation", val_fraction=0.2, seed=3)
    assert all(Path(c["image"]).is_absolute() for c in train)
    # no labelled test list: evaluation falls back to the held-out cases
    assert load_datalist(str(tmp_path), "test", val_fraction=0.2, seed=3) == val


def test_frames_of_one_subject_are_held_out_together(tmp_path):
    write_index(tmp_path, 12)
    index = json.loads((tmp_path / "dataset.json").read_text())
    for i, entry in enumerate(index["training"]):
        entry["subject"] = f"s{i // 2}"  # 6 subjects with 2 frames each
    (tmp_path / "dataset.json").write_text(json.dumps(index))
    train = load_datalist(str(tmp_path), "training", val_fraction=0.34, seed=1)
    val = load_datalist(str(tmp_path), "validation", val_fraction=0.34, seed=1)
    assert len(val) == 4 and len(train) == 8  # 2 of 6 subjects, both frames each
    assert not {c["subject"] for c in train} & {c["subject"] for c in val}


def test_explicit_validation_list_is_used(tmp_path):
    write_index(tmp_path, 4, {"validation": [{"image": "img0.png", "label": "lab0.png"}]})
    assert len(load_datalist(str(tmp_path), "training")) == 4
    assert [Path(c["image"]).name for c in load_datalist(str(tmp_path), "validation")] == ["img0.png"]


def test_missing_files_and_labels_are_named(tmp_path):
    write_index(tmp_path, 3)
    (tmp_path / "lab1.png").unlink()
    with pytest.raises(FileNotFoundError, match="lab1.png does not exist"):
        load_datalist(str(tmp_path), "training", val_fraction=0.0)
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "img0.png"}]}))
    with pytest.raises(ValueError, match="img0.png has no 'label'"):
        load_datalist(str(tmp_path), "training", val_fraction=0.0)
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        load_datalist(str(tmp_path / "nowhere"))


def test_list_images_filters_and_reports_empty_folder(tmp_path):
    (tmp_path / "b.PNG").write_bytes(b"x")
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [Path(c["image"]).name for c in list_images(str(tmp_path), [".png", ".jpg"])] == ["a.jpg", "b.PNG"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        list_images(str(tmp_path / "empty"), [".png"])


def test_check_imaged_messages_name_the_file():
    def image(shape, name, fill=0.0):
        return MetaTensor(torch.full(shape, fill), meta={"filename_or_obj": name})

    check = CheckImaged(keys=["image", "label"], channels={"image": 3, "label": 1})
    check({"image": image((3, 4, 5), "a.png"), "label": image((1, 4, 5), "a_lab.png")})
    cases = [
        ({"image": image((1, 4, 5), "grey.png")}, "grey.png: the image has 1 channel"),
        ({"image": image((3, 0, 5), "empty.png")}, "empty.png: the image is empty"),
        ({"image": image((3, 4, 5), "nan.png", float("nan"))}, "nan.png: the image contains NaN"),
        (
            {"image": image((3, 4, 5), "a.png"), "label": image((1, 4, 6), "b.png")},
            "b.png: the label has spatial shape",
        ),
    ]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            check(data)
    volume_check = CheckImaged(keys=["image", "label"], spatial_dims=3, max_label={"label": 3})
    volume_check({"image": image((1, 4, 5, 2), "v.nii.gz"), "label": image((1, 4, 5, 2), "l.nii.gz", 3.0)})
    with pytest.raises(ValueError, match=r"flat.png: the image has 2 spatial dimension\(s\).*expected 3"):
        volume_check({"image": image((1, 4, 5), "flat.png")})
    with pytest.raises(ValueError, match=r"l.nii.gz: the label holds values \[7.0\] outside the classes 0..3"):
        volume_check({"image": image((1, 4, 5, 2), "v.nii.gz"), "label": image((1, 4, 5, 2), "l.nii.gz", 7.0)})


def test_screened_dataset_skips_bad_cases_and_reports_them(tmp_path):
    Image.fromarray(np.full((6, 5, 3), 9, np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    load = Compose([LoadImaged("image", reader="PILReader", image_only=True), EnsureChannelFirstd("image")])
    cases = [{"image": str(tmp_path / "good.png")}, {"image": str(tmp_path / "bad.png")}]
    data = ScreenedDataset(cases, load, report_path=str(tmp_path / "failed.json"))
    assert len(data) == 1 and data[0]["image"].shape == (3, 5, 6)
    report = json.loads((tmp_path / "failed.json").read_text())
    assert [Path(r["image"]).name for r in report] == ["bad.png"] and "bad.png" in report[0]["error"]
    uncached = ScreenedDataset(cases, load, cache=False)
    assert len(uncached) == 1 and float(uncached[0]["image"].max()) == 9.0
    with pytest.raises(ValueError, match="none of the 1 cases"):
        ScreenedDataset(cases[1:], load)


def test_screened_dataset_without_cache_prepares_each_case_once_within_its_budget():
    calls = []

    def prepare(case):
        calls.append(case["image"])
        if case["image"] == "bad":
            raise ValueError("bad: unreadable")
        return {"image": torch.full((1, 4, 4), float(len(case["image"])))}

    cases = [{"image": "a"}, {"image": "bad"}, {"image": "ccc"}]
    data = ScreenedDataset(cases, prepare, cache=False)
    assert len(data) == 2 and [f["image"] for f in data.failures] == ["bad"]
    assert float(data[0]["image"].max()) == 1.0 and float(data[1]["image"].max()) == 3.0
    assert sorted(calls) == ["a", "bad", "ccc"], "a case kept from the screening is not prepared again"
    assert float(data[1]["image"].max()) == 3.0 and calls.count("ccc") == 2, "a second read prepares it again"
    calls.clear()
    small = ScreenedDataset(cases, prepare, cache=False, keep_bytes=64)  # room for one 4x4 float32 case only
    assert [float(small[i]["image"].max()) for i in range(2)] == [1.0, 3.0]
    assert sorted(calls) == ["a", "bad", "ccc", "ccc"]


def test_argmaxd_equals_asdiscreted():
    probabilities = MetaTensor(torch.rand(3, 6, 5, 4), meta={"filename_or_obj": "/in/case.nii.gz"})
    probabilities[:, :2] = 0.0  # ties: the first class, as argmax
    expected = AsDiscreted("pred", argmax=True)({"pred": probabilities})["pred"]
    labels = ArgMaxd("pred")({"pred": probabilities})["pred"]
    assert isinstance(labels, MetaTensor) and labels.dtype == expected.dtype and labels.shape == (1, 6, 5, 4)
    assert torch.equal(labels.as_tensor(), expected.as_tensor()) and labels.meta["filename_or_obj"] == "/in/case.nii.gz"


def test_atomic_save_writes_final_file_only(tmp_path):
    image = MetaTensor(torch.ones(1, 7, 5), meta={"filename_or_obj": "/in/case.png"})
    saver = AtomicSaveImaged(keys="pred", output_dir=str(tmp_path), output_postfix="seg", output_ext=".png",
                             output_dtype="uint8", scale=255, writer="PILWriter")  # fmt: skip
    out = saver({"pred": image})
    assert Path(out["pred"].meta["saved_to"]) == tmp_path / "case_seg.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_seg.png"]
    assert np.asarray(Image.open(tmp_path / "case_seg.png")).max() == 255


def test_case_table_writer_rows_csv_and_summary(tmp_path):
    def step(engine, batch):
        return [{"pred": MetaTensor(torch.tensor([batch]), meta={"filename_or_obj": f"/d/case{int(batch)}.nii.gz"})}]

    engine = Engine(step)

    def totals(rows):
        return [{"subject": "all", "total": sum(r["value"] for r in rows)}]

    writer = CaseTableWriter(lambda item: {"value": float(item["pred"][0])}, str(tmp_path), "measure",
                             per_case_json=True, source_key="pred", derived={"totals": totals})  # fmt: skip
    writer.attach(engine)
    engine.run([1.0, 2.0, 6.0], max_epochs=1)
    with open(tmp_path / "measure.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case1", "case2", "case6"]
    summary = json.loads((tmp_path / "measure_summary.json").read_text())
    assert summary["cases"] == 3 and summary["value"]["mean"] == pytest.approx(3.0)
    assert summary["value"]["median"] == pytest.approx(2.0)
    assert json.loads((tmp_path / "case6_measure.json").read_text())["value"] == 6.0
    assert engine.state.metrics["measure/value"] == pytest.approx(3.0)
    assert (tmp_path / "totals.csv").read_text().splitlines() == ["subject,total", "all,9.0"]


def test_tables_helpers(tmp_path):
    assert case_stem("/a/b/case_01.nii.gz") == "case_01" and case_stem("x/img.png") == "img"
    rows = [{"a": 1.0, "b": "x"}, {"a": float("nan"), "c": 2}]
    assert summarize(rows)["a"]["count"] == 1 and "b" not in summarize(rows)
    write_csv_atomic(tmp_path / "t.csv", rows)
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "a,b,c"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- multimodal cases, patch pipelines, normalisation


def test_list_images_groups_channels_by_the_nnunet_convention(tmp_path):
    for name in ("b_0001.nii.gz", "b_0000.nii.gz", "a_0000.nii.gz", "a_0002.nii.gz", "a_0001.nii.gz", "c.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "notes_0000.txt").write_bytes(b"x")
    cases = list_images(str(tmp_path), [".nii.gz"], group_channels=True)
    names = [
        [Path(p).name for p in c["image"]] if isinstance(c["image"], list) else Path(c["image"]).name for c in cases
    ]
    assert names == [
        ["a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"],
        ["b_0000.nii.gz", "b_0001.nii.gz"],
        "c.nii.gz",
    ]
    # without grouping every file is a case
    assert len(list_images(str(tmp_path), [".nii.gz"])) == 6


def test_multimodal_case_path_strips_the_channel_index():
    assert multimodal_case_path("/d/case_12_0000.nii.gz") == "/d/case_12.nii.gz"
    assert multimodal_case_path("/d/T1.nii.gz") == "/d/T1.nii.gz"


def test_centre_label_takes_the_centre_pixel_and_refuses_even_patches():
    label = torch.zeros(1, 5, 5)
    label[0, 2, 2] = 3
    out = CentreLabeld("label")({"label": MetaTensor(label)})["label"]
    assert out.shape == () and out.dtype == torch.long and int(out) == 3 and not isinstance(out, MetaTensor)
    with pytest.raises(ValueError, match="no centre pixel"):
        CentreLabeld("label")({"label": torch.zeros(1, 4, 5)})


def test_compose_without_meta_returns_plain_tensors_and_restores_tracking():
    data = {"image": MetaTensor(torch.rand(1, 8, 8), affine=torch.eye(4))}
    flip = ComposeWithoutMeta([Flipd("image", spatial_axis=0)])
    out = flip(data)
    assert type(out["image"]) is torch.Tensor and get_track_meta()
    torch.testing.assert_close(out["image"], data["image"].as_tensor().flip(1))
    failing = ComposeWithoutMeta([Lambdad("image", lambda x: 1 / 0)])
    with pytest.raises(RuntimeError, match="applying transform"):
        failing(data)
    assert get_track_meta(), "metadata tracking must be restored after an error"


def test_normalize_in_head_z_scores_each_modality_inside_the_head():
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:6, :40, :40]
    head = ((yy - 20) ** 2 + (xx - 20) ** 2 < 12**2).transpose(2, 1, 0)  # (X, Y, Z)
    t1 = np.where(head, 100 + 20 * rng.random(head.shape), rng.random(head.shape))  # air: noise near 0
    t2 = 37.0 * t1 + 5  # another scanner gain: the same normalised image
    image = MetaTensor(torch.as_tensor(np.stack([t1, t2]), dtype=torch.float32))
    out = NormalizeInHeadd("image")({"image": image})["image"]
    mask = head_mask(np.stack([t1, t2]))
    assert (mask == head).mean() > 0.99
    for c in range(2):
        assert float(out[c][torch.as_tensor(mask)].mean()) == pytest.approx(0, abs=1e-4)
        assert float(out[c][torch.as_tensor(mask)].std()) == pytest.approx(1, abs=1e-2)
    torch.testing.assert_close(out[0], out[1], atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="constant"):
        NormalizeInHeadd("image")({"image": MetaTensor(torch.ones(2, 4, 4, 4))})


def test_check_hounsfield_refuses_images_without_air_naming_the_file():
    ct = torch.full((1, 20, 20, 10), -1000.0)
    ct[:, 5:15, 5:15] = 40.0
    CheckHounsfieldd("image")({"image": MetaTensor(ct, meta={"filename_or_obj": "ct.nii.gz"})})
    for name, image in (("scaled.nii.gz", (ct + 1000) / 1040), ("mr.nii.gz", torch.rand(1, 20, 20, 10) * 900)):
        with pytest.raises(ValueError, match=rf"{name}.*not CT in Hounsfield units"):
            CheckHounsfieldd("image")({"image": MetaTensor(image, meta={"filename_or_obj": name})})
    one_stray = torch.rand(1, 20, 20, 10) * 900
    one_stray[0, 0, 0, 0] = -1000  # a single negative voxel is not air around a body
    with pytest.raises(ValueError, match="1st percentile"):
        CheckHounsfieldd("image")({"image": one_stray})


def test_list_images_finds_dicom_series_folders(tmp_path):
    (tmp_path / "ct.nii.gz").write_bytes(b"x")
    series = tmp_path / "series1"
    series.mkdir()
    (series / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)  # Part 10 file without an extension
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_bytes(b"text")
    found = [Path(c["image"]).name for c in list_images(str(tmp_path), [".nii.gz"], series_folders=True)]
    assert found == ["ct.nii.gz", "series1"]
    assert [Path(c["image"]).name for c in list_images(str(tmp_path), [".nii.gz"])] == ["ct.nii.gz"]
    with pytest.raises(FileNotFoundError, match="DICOM series folders"):
        list_images(str(tmp_path / "notes"), [".nii.gz"], series_folders=True)


def test_csv_leaves_list_columns_to_the_json(tmp_path):
    rows = [{"case": "a", "count": 2, "lesions": [{"volume_ml": 1.0}]}, {"case": "b", "count": 0, "lesions": []}]
    write_csv_atomic(tmp_path / "t.csv", rows)
    with open(tmp_path / "t.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{"case": "a", "count": "2"}, {"case": "b", "count": "0"}]


def test_load_datalist_keeps_scalar_extras_and_drops_lists(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "a_seg.nii.gz").write_bytes(b"x")
    entry = {"image": "a.nii.gz", "label": "a_seg.nii.gz", "subject": "s1", "liver_ml": 1.5, "tumours": [{"v": 1}]}
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [entry], "validation": [entry]}))
    (case,) = load_datalist(str(tmp_path), "validation")
    assert case == {
        "image": str(tmp_path / "a.nii.gz"),
        "label": str(tmp_path / "a_seg.nii.gz"),
        "subject": "s1",
        "liver_ml": 1.5,
    }


def test_head_mask_keeps_only_the_largest_region():
    zz, yy, xx = np.mgrid[:4, :40, :40]
    head = ((yy - 18) ** 2 + (xx - 18) ** 2 < 12**2).transpose(2, 1, 0)  # (X, Y, Z)
    marker = np.zeros_like(head)
    marker[35:38, 35:38, :] = True  # a bright marker beside the head, not part of it
    image = np.where(head | marker, 100.0, 0.0)[None]
    assert (head_mask(image) == head).all()


def test_is_dicom_file_reads_the_preamble_or_trusts_the_suffix(tmp_path):
    (tmp_path / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (tmp_path / "scan.DCM").write_bytes(b"not read")
    (tmp_path / "short").write_bytes(b"DICM")
    (tmp_path / "notes.txt").write_bytes(b"\0" * 200)
    assert is_dicom_file(tmp_path / "IM0001") and is_dicom_file(tmp_path / "scan.DCM")
    assert not is_dicom_file(tmp_path / "short") and not is_dicom_file(tmp_path / "notes.txt")
    assert not is_dicom_file(tmp_path / "missing") and not is_dicom_file(tmp_path)


def test_small_components_are_relabelled_by_volume_in_mm3():
    affine = np.diag([2.0, 2.0, 2.5, 1.0])  # 10 mm3 voxels
    label = np.zeros((12, 12, 8), np.float32)
    label[1:3, 1:3, 1] = 1  # 4 voxels: 40 mm3
    label[8, 8, 5] = label[9, 9, 6] = 1  # diagonal neighbours, one component (26-connectivity): 20 mm3
    label[5, 10, 2] = 1  # 10 mm3
    pred = MetaTensor(torch.as_tensor(label[None]), affine=torch.as_tensor(affine))
    kept = RemoveSmallComponentsd("pred", min_volume_mm3=15.0)({"pred": pred})["pred"]
    expected = label.copy()
    expected[5, 10, 2] = 0
    np.testing.assert_array_equal(np.asarray(kept[0]), expected)
    assert isinstance(kept, MetaTensor) and np.allclose(np.asarray(kept.affine), affine)
    assert int(RemoveSmallComponentsd("pred", min_volume_mm3=25.0)({"pred": pred})["pred"].sum()) == 4
    # a tumour (2) island inside the liver (1) under the size becomes liver; the larger tumour stays
    organ = np.where(label > 0, 2, 1).astype(np.float32)
    organ_pred = MetaTensor(torch.as_tensor(organ[None]), affine=torch.as_tensor(affine))
    relabelled = RemoveSmallComponentsd("pred", 15.0, label=2, fill=1)({"pred": organ_pred})["pred"]
    assert relabelled[0, 5, 10, 2] == 1 and relabelled[0, 1, 1, 1] == 2 and int((relabelled == 2).sum()) == 6


def test_largest_component_matches_monai_and_labels_match_the_whole_volume():
    """``KeepLargestComponentd`` (labelled in the foreground's box) gives MONAI's result; components are those of
    labelling the whole volume."""
    from scipy import ndimage

    from common.metrics.lesions import label_components

    rng = np.random.default_rng(3)
    labels = np.zeros((40, 36, 30), np.uint8)
    labels[6:30, 8:28, 5:22] = rng.choice([0, 1, 2], size=(24, 20, 17), p=[0.55, 0.3, 0.15])
    pred = MetaTensor(torch.as_tensor(labels[None]), affine=torch.diag(torch.tensor([0.8, 0.8, 1.5, 1.0])))
    ours = KeepLargestComponentd("pred", applied_labels=[1, 2])({"pred": pred.clone()})["pred"]
    monai = KeepLargestConnectedComponentd("pred", applied_labels=[1, 2], independent=False)({"pred": pred.clone()})
    assert 0 < int((ours != pred).sum()) and torch.equal(ours.as_tensor(), monai["pred"].as_tensor())
    assert isinstance(ours, MetaTensor) and ours.dtype == pred.dtype
    boxed, count = label_components(labels > 0)
    whole, expected = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    assert count == expected > 1 and np.array_equal(boxed, whole)
    assert label_components(np.zeros((4, 4, 4), bool))[1] == 0


def test_outside_the_bounding_box_of_a_mask_is_certain_background():
    """``BoundingBoxd`` fills a mask's box; ``BackgroundOutsided`` makes the probabilities outside it background."""
    mask = torch.zeros(1, 10, 12, 4, dtype=torch.bool)
    mask[0, 2, 3, 1] = mask[0, 6, 8, 2] = True
    box = BoundingBoxd("head")({"head": MetaTensor(mask, affine=torch.eye(4))})["head"]
    assert isinstance(box, MetaTensor) and int(box.sum()) == 5 * 6 * 2 and bool(box[0, 2:7, 3:9, 1:3].all())
    empty = BoundingBoxd("head")({"head": torch.zeros_like(mask)})["head"]
    assert not empty.any()
    probabilities = torch.full((3, 10, 12, 4), 1.0 / 3)
    out = BackgroundOutsided("pred", mask_key="head")({"pred": probabilities, "head": box})["pred"]
    assert torch.equal(out[:, ~box[0]].T, torch.tensor([1.0, 0.0, 0.0]).expand(int((~box).sum()), 3))
    assert torch.equal(out[:, box[0]], probabilities[:, box[0]])


def test_only_the_newest_epoch_checkpoints_are_kept(tmp_path):
    for name in ["checkpoint_epoch=2.pt", "checkpoint_epoch=10.pt", "checkpoint_epoch=9.pt", "checkpoint_epoch=1.pt",
                 "checkpoint_final.pt", "model.pt", "checkpoint_epoch=x.pt"]:  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    PruneCheckpoints(str(tmp_path), keep=2)()
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["checkpoint_epoch=10.pt", "checkpoint_epoch=9.pt", "checkpoint_epoch=x.pt", "checkpoint_final.pt",
                    "model.pt"]  # fmt: skip


@pytest.mark.parametrize("channel_wise, relative", [(False, False), (True, False), (True, True)])
def test_partition_percentiles_scale_as_monai_does(channel_wise, relative):
    image = MetaTensor(torch.randn(2, 31, 27, 9) * 300.0 + 50.0, affine=torch.diag(torch.tensor([1.5, 1.5, 8.0, 1.0])))
    options = {"keys": "image", "lower": 1, "upper": 99, "b_min": 0.0, "b_max": 1.0, "clip": True,
               "channel_wise": channel_wise, "relative": relative}  # fmt: skip
    ours = PartitionPercentilesd(**options)({"image": image})["image"]
    theirs = ScaleIntensityRangePercentilesd(**options)({"image": image})["image"]
    torch.testing.assert_close(ours.as_tensor(), theirs.as_tensor(), rtol=0, atol=1e-6)
    assert isinstance(ours, MetaTensor) and torch.equal(ours.affine, image.affine) and ours.dtype == torch.float32
