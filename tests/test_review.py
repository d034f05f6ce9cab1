"""The review page of an inference run (common.review, common.overlay, common.report): quality signals on
hand-made probabilities, the plausibility rules, the overlay pictures, the HTML page read back (and, where Chromium
is installed, rendered by a browser), the handler on an ignite engine, and every bundle's review rules."""

from __future__ import annotations

import base64
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from PIL import Image

from common.handlers import CaseTableWriter
from common.overlay import Thumbnaild, overlay_png, plane_indices, png_bytes
from common.report import ReviewReport, render_page
from common.review import (
    MergedRow,
    QualitySignalsd,
    ReviewRow,
    ReviewRules,
    quality_signals,
    review_flag,
    review_summary,
    rules_of,
)
from conftest import BUNDLE_NAMES, ROOT

# ---------------------------------------------------------------- signals


def test_entropy_of_a_uniform_two_class_prediction_is_one_and_of_a_one_hot_zero():
    uniform = torch.full((2, 2, 1), 0.5)  # an exact tie is background (the first maximum), so the second pixel
    uniform[:, 1] = torch.tensor([0.4999, 0.5001]).view(2, 1)  # is made foreground by a hair
    signals = quality_signals(uniform)
    assert signals["mean_entropy"] == pytest.approx(1.0, abs=1e-6)
    assert signals["mean_margin"] == pytest.approx(0.0002, abs=1e-6)
    assert signals["foreground_fraction"] == pytest.approx(0.5)
    one_hot = torch.zeros(3, 4, 4)
    one_hot[0], one_hot[2, :2] = 1.0, 1.0
    one_hot[0, :2] = 0.0
    signals = quality_signals(one_hot)
    assert signals["mean_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert signals["mean_margin"] == pytest.approx(1.0)
    assert signals["foreground_fraction"] == pytest.approx(0.5)


def test_signals_are_computed_inside_the_foreground_only_and_by_hand():
    # three classes, four voxels: two background (certain), two foreground
    values = [[1.0, 0.9, 0.2, 0.1], [0.0, 0.1, 0.5, 0.1], [0.0, 0.0, 0.3, 0.8]]
    prob = torch.tensor(values, dtype=torch.float64).view(3, 2, 2)
    signals = quality_signals(MetaTensor(prob))

    def entropy(p):
        return -sum(x * math.log(x) for x in p if x > 0) / math.log(3)

    assert signals["mean_entropy"] == pytest.approx((entropy([0.2, 0.5, 0.3]) + entropy([0.1, 0.1, 0.8])) / 2)
    assert signals["mean_margin"] == pytest.approx(((0.5 - 0.3) + (0.8 - 0.1)) / 2)
    assert signals["foreground_fraction"] == pytest.approx(0.5)


def test_nothing_found_gives_nan_signals_and_the_transform_keeps_the_probabilities():
    prob = torch.zeros(2, 3, 3, 3)
    prob[0] = 1.0
    out = QualitySignalsd(keys="pred")({"pred": prob})
    assert out["pred"] is prob
    assert math.isnan(out["quality"]["mean_entropy"]) and math.isnan(out["quality"]["mean_margin"])
    assert out["quality"]["foreground_fraction"] == 0.0
    with pytest.raises(ValueError, match="at least 2 classes"):
        quality_signals(torch.ones(1, 4, 4))


# ---------------------------------------------------------------- rules

RULES = {
    "ranges": {"liver_ml": [700, 3000], "tumour_burden_percent": [None, 50]},
    "max_entropy": 0.25,
    "min_margin": 0.5,
    "flag_empty": True,
}


def test_a_value_outside_its_range_is_flagged_naming_the_column():
    row = {"liver_ml": 310.2, "tumour_burden_percent": 3.0, "mean_entropy": 0.1, "mean_margin": 0.9,
           "foreground_fraction": 0.2}  # fmt: skip
    flag = review_flag(row, RULES)
    assert flag == {"review": True, "review_reasons": "liver volume 310 mL outside 700-3000 mL"}
    row.update(liver_ml=1500.0, tumour_burden_percent=61.0)
    assert review_flag(row, RULES)["review_reasons"] == "tumour burden 61 % > 50 %"


def test_a_plausible_case_is_not_flagged_and_missing_values_are_not_judged():
    row = {"liver_ml": 1500.0, "tumour_burden_percent": float("nan"), "mean_entropy": 0.1, "mean_margin": 0.9,
           "foreground_fraction": 0.2}  # fmt: skip
    assert review_flag(row, RULES) == {"review": False, "review_reasons": ""}


def test_uncertainty_and_nothing_found_are_reasons():
    row = {"liver_ml": 1500.0, "tumour_burden_percent": 0.0, "mean_entropy": 0.41, "mean_margin": 0.3,
           "foreground_fraction": 0.2}  # fmt: skip
    reasons = review_flag(row, RULES)["review_reasons"].split("; ")
    assert reasons == [
        "uncertain: mean entropy 0.41 > 0.25 inside the structures",
        "uncertain: mean margin 0.30 < 0.50 inside the structures",
    ]
    empty = {"liver_ml": 0.0, "tumour_burden_percent": None, "mean_entropy": float("nan"), "mean_margin": float("nan"),
             "foreground_fraction": 0.0}  # fmt: skip
    assert review_flag(empty, RULES)["review_reasons"] == "nothing found; liver volume 0 mL outside 700-3000 mL"


def test_malformed_rules_are_refused_with_what_to_write():
    with pytest.raises(ValueError, match="unknown key"):
        ReviewRules.from_config({"range": {}})
    with pytest.raises(ValueError, match=r"\[low, high\]"):
        ReviewRules.from_config({"ranges": {"liver_ml": 700}})
    with pytest.raises(ValueError, match="low <= high"):
        ReviewRules.from_config({"ranges": {"liver_ml": [3000, 700]}})
    with pytest.raises(KeyError, match="no column 'spleen_ml'"):
        review_flag({"liver_ml": 1.0}, {"ranges": {"spleen_ml": [1, 2]}})


def test_review_row_wraps_the_bundles_row_function():
    row_fn = ReviewRow(lambda item: {"liver_ml": 200.0, "tumour_burden_percent": 1.0}, RULES)
    quality = {"mean_entropy": 0.1, "mean_margin": 0.8, "foreground_fraction": 0.05}
    row = row_fn({"quality": quality})
    assert row["mean_entropy"] == 0.1 and row["mean_margin"] == 0.8 and row["foreground_fraction"] == 0.05
    assert row["review"] is True and row["review_reasons"].startswith("liver volume 200 mL")
    with pytest.raises(KeyError, match="QualitySignalsd"):
        row_fn({})


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_every_bundle_documents_review_rules_and_a_report_switch(name):
    bundle = ROOT / "bundles" / name
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["write_report"] is True
    rules = ReviewRules.from_config(config["review_rules"])
    assert rules.ranges and rules.max_entropy is not None
    card = (bundle / "docs" / "README.md").read_text()
    assert "review" in card.lower() and all(column in card for column in rules.ranges), "rules not in the card"
    targets = [t.get("_target_") for t in config["postprocessing"]["transforms"]]
    assert targets.index("common.review.QualitySignalsd") < targets.index("common.overlay.Thumbnaild")
    assert targets[-1] == "common.overlay.Thumbnaild"
    handlers = [h["_target_"] for h in config["handlers"]]
    assert handlers.index("common.handlers.CaseTableWriter") < handlers.index("common.report.ReviewReport")


# ---------------------------------------------------------------- pictures


def decode_png(data: bytes) -> np.ndarray:
    """Pixels of a PNG read back by Pillow (an independent decoder)."""
    from io import BytesIO

    return np.asarray(Image.open(BytesIO(data)).convert("RGB"))


def test_png_bytes_decode_to_the_same_pixels():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(png_bytes(rgb)), rgb)


def test_a_photograph_gets_one_plane_a_volume_three():
    photo = MetaTensor(torch.rand(3, 40, 30))
    label = MetaTensor(torch.zeros(1, 40, 30))
    label[0, 10:20, 5:10] = 1
    picture = decode_png(overlay_png(photo, label, size=64))
    assert picture.shape == (48, 64, 3)  # (width, height) arrays: rows along the second axis, as PIL reads it
    coloured = (picture != picture[..., :1]).any(axis=2)
    assert coloured[9:15, 17:31].all() and not coloured[:7].any() and not coloured[:, :15].any()
    affine = torch.diag(torch.tensor([2.0, 1.0, 4.0, 1.0]))
    volume = MetaTensor(torch.rand(1, 20, 40, 10), affine=affine)
    seg = MetaTensor(torch.zeros(1, 20, 40, 10), affine=affine)
    seg[0, 5:10, 10:20, 3:6] = 2
    picture = decode_png(overlay_png(volume, seg, size=40))
    assert picture.shape == (40, 40 * 3 + 4 * 2, 3)  # 40 mm x 40 mm axial; 40 x 40 coronal; 40 x 40 sagittal


def test_planes_follow_the_world_axes_whatever_the_voxel_order():
    ras = np.eye(4)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    (axial, _), *_ = plane_indices((4, 5, 6), ras, (1, 2, 3))
    (flipped, _), *_ = plane_indices((4, 5, 6), lps, (1, 2, 3))
    assert axial.shape == (3, 5, 4) and (axial[2] == 3).all()
    np.testing.assert_array_equal(flipped[0], 3 - axial[0])  # the same world position on the screen
    np.testing.assert_array_equal(flipped[1], 4 - axial[1])


def test_the_image_is_looked_up_through_both_affines():
    label = MetaTensor(torch.zeros(1, 8, 8, 8), affine=torch.eye(4))
    label[0, 2:4, 2:4, 2:4] = 1
    image = MetaTensor(torch.ones(1, 4, 4, 4), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    assert decode_png(overlay_png(image, label, size=16)).shape == (16, 16 * 3 + 8, 3)


def test_a_picture_that_fails_leaves_the_case_without_one(caplog):
    data = {"pred": MetaTensor(torch.zeros(1, 4, 4)), "image": "not an image"}
    out = Thumbnaild(keys="pred")(data)
    assert "thumbnail" not in out and "no review picture" in caplog.text


# ---------------------------------------------------------------- the page


class PageParser(HTMLParser):
    """What the tests read back from the page: table rows by class, their cells, the images and every URL."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str]]] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self._row: tuple[str, list[str]] | None = None
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("href", "src"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == "table":
            self._table = attrs.get("id")
        if tag == "tr" and self._table == "cases" and "class" in attrs:
            self._row = (attrs["class"], [])
            self.rows.append(self._row)
        if tag == "td" and self._row is not None:
            self._row[1].append("")
        if tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row is not None and self._row[1]:
            self._row[1][-1] += data


def fake_cases() -> tuple[list[dict], dict[str, bytes]]:
    """Three cases (the second flagged) with measurements, review columns and a picture each."""
    rows, pictures = [], {}
    for i, volume in enumerate((1500.0, 310.0, 1800.0)):
        file = f"/in/case{i}.nii.gz"
        row = {"case": f"case{i}", "file": file, "liver_ml": volume, "tumour_burden_percent": 0.0, "tumour_count": i,
               "tumours": [{"lesion": 1}],
               "mean_entropy": 0.1, "mean_margin": 0.9, "foreground_fraction": 0.1}  # fmt: skip
        row.update(review_flag(row, RULES))
        rows.append(row)
        pictures[file] = png_bytes(np.full((6, 9, 3), 40 * i, np.uint8))
    return rows, pictures


def write_fake_report(folder: Path) -> Path:
    """A review page of the three fake cases and one failed case, written as the handler writes it."""
    rows, pictures = fake_cases()
    failures = [{"image": "/in/broken.nii.gz", "error": "/in/broken.nii.gz: not an image"}]
    page = render_page("Liver test", "0.1.0", {"input_dir": "/in", "device": "cpu"}, rows, pictures, failures)
    path = folder / "report.html"
    path.write_text(page)
    return path


def test_the_page_lists_every_case_flagged_first_with_one_inline_picture_each(tmp_path):
    page = write_fake_report(tmp_path).read_text()
    parser = PageParser()
    parser.feed(page)
    assert [cls for cls, _ in parser.rows] == ["flagged", "ok", "ok"]
    assert [cells[0] for _, cells in parser.rows] == ["case1", "case0", "case2"]
    assert "liver volume 310 mL outside 700-3000 mL" in parser.rows[0][1][2]
    assert len(parser.images) == 3 and all(src.startswith("data:image/png;base64,") for src in parser.images)
    for src in parser.images:
        assert decode_png(base64.b64decode(src.split(",", 1)[1])).shape == (6, 9, 3)
    assert "http://" not in page and "https://" not in page and "//" not in "".join(parser.links).replace(":/", "")
    assert "/in/broken.nii.gz: not an image" in page and "Liver test" in page and "0.1.0" in page
    assert "tumours" not in page.split("<thead>")[1].split("</thead>")[0]  # lists stay in the JSON files


def test_a_case_without_picture_is_still_listed(tmp_path):
    rows, pictures = fake_cases()
    pictures.pop(rows[0]["file"])
    parser = PageParser()
    parser.feed(render_page("t", "1", {}, rows, pictures))
    assert len(parser.rows) == 3 and len(parser.images) == 2
    assert "no picture" in next(cells for _, cells in parser.rows if cells[0] == "case0")


def chromium() -> str | None:
    """The Chromium executable on PATH, if any."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (apt-get install chromium) for the browser check")
def test_a_browser_renders_the_page_after_its_script(tmp_path):
    path = write_fake_report(tmp_path)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium(), *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = PageParser()
    parser.feed(dom.stdout)
    assert [cls for cls, _ in parser.rows] == ["flagged", "ok", "ok"]
    assert 'id="lightbox"' in dom.stdout  # made by the page's script: it ran
    shot = tmp_path / "shot.png"
    screenshot = subprocess.run([chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,800", path.as_uri()],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
    assert screenshot.returncode == 0 and shot.is_file() and shot.stat().st_size > 0, screenshot.stderr[-2000:]
    assert np.asarray(Image.open(shot)).std() > 0  # not a blank page


# ---------------------------------------------------------------- the handler


def test_the_handler_writes_the_page_from_the_table_and_the_pictures(tmp_path):
    (tmp_path / "failed.json").write_text(json.dumps([{"image": "/d/bad.nii.gz", "error": "bad"}]))
    (tmp_path / "model.pt").write_bytes(b"weights")
    volumes = {"/d/case1.png": 1500.0, "/d/case2.png": 100.0, "/d/case3.png": 2000.0}

    def step(engine, batch):
        meta = {"filename_or_obj": f"/d/case{batch}.png"}
        pred = MetaTensor(torch.zeros(1, 6, 6), meta=meta)
        pred[0, 2:4, 2:4] = 1
        item = {"pred": pred, "image": MetaTensor(torch.rand(3, 6, 6), meta=meta), "quality": {
            "mean_entropy": 0.1, "mean_margin": 0.9, "foreground_fraction": 0.1}}  # fmt: skip
        return [Thumbnaild(keys="pred")(item) if batch != 3 else item]  # case 3: its picture failed

    def liver(item):
        return {"liver_ml": volumes[item["pred"].meta["filename_or_obj"]], "tumour_burden_percent": 0.0}

    engine = Engine(step)
    table = CaseTableWriter(ReviewRow(liver, RULES), str(tmp_path), "measurements")
    report = ReviewReport(
        str(tmp_path),
        str(ROOT / "bundles" / "liver_ct_unet3d"),
        "measurements",
        report_path=str(tmp_path / "failed.json"),
        input_dir="/d",
        ckpt_path=str(tmp_path / "model.pt"),
        device="cpu",
    )
    table.attach(engine)
    report.attach(engine)
    engine.run([1, 2, 3], max_epochs=1)
    page = (tmp_path / "report.html").read_text()
    parser = PageParser()
    parser.feed(page)
    assert [(cls, cells[0]) for cls, cells in parser.rows] == [("flagged", "case2"), ("ok", "case1"), ("ok", "case3")]
    assert len(parser.images) == 2 and "bad" in page
    assert "Liver and liver-tumour CT segmentation" in page
    import hashlib

    assert hashlib.sha256(b"weights").hexdigest()[:12] in page
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    header = (tmp_path / "measurements.csv").read_text().splitlines()[0].split(",")
    assert {"mean_entropy", "mean_margin", "review", "review_reasons"} <= set(header)


def test_the_handler_refuses_to_run_before_its_table(tmp_path):
    engine = Engine(lambda engine, batch: [{}])
    ReviewReport(str(tmp_path), str(tmp_path), "measurements").attach(engine)
    with pytest.raises(RuntimeError, match="after the CaseTableWriter"):
        engine.run([1], max_epochs=1)
    assert not list(tmp_path.iterdir()), "a half-made report was left"


def test_png_is_compressed():
    data = png_bytes(np.zeros((100, 100, 3), np.uint8))
    assert data.startswith(b"\x89PNG") and len(data) < 400  # 30000 bytes of pixels


# ---------------------------------------------------------------- evaluation: how well the flags find the bad cases


def _case(dice_a, dice_b, review):
    return {"dice_a": dice_a, "dice_b": dice_b, "lesion_dice": 0.0, "review": review}


def test_the_summary_compares_flagged_and_unflagged_cases_by_their_mean_class_dice():
    rows = [_case(0.9, 0.7, False), _case(0.2, math.nan, True), _case(0.6, 0.4, True), _case(1.0, 0.8, False)]
    rows += [_case(0.9, 0.9, False) for _ in range(6)]
    summary = review_summary(rows)
    assert summary["dice_columns"] == ["dice_a", "dice_b"]  # lesion_dice is not a class Dice
    assert summary["cases"] == 10 and summary["flagged"] == 2
    assert summary["mean_dice_flagged"] == pytest.approx((0.2 + 0.5) / 2)  # NaN-aware: case 2's Dice is 0.2
    assert summary["mean_dice_unflagged"] == pytest.approx((0.8 + 0.9 + 6 * 0.9) / 8)
    assert summary["worst_cases"] == 1 and summary["worst_flagged"] == 1.0  # the worst case (0.2) is flagged


def test_the_worst_tenth_leaves_out_cases_without_dice_and_counts_at_least_one():
    rows = [_case(math.nan, math.nan, True), _case(0.1, 0.1, False), _case(0.3, 0.3, True)]
    rows += [_case(0.5 + i / 100, 0.5, False) for i in range(20)]  # 22 cases with a Dice: the worst 2
    summary = review_summary(rows)
    assert summary["cases"] == 23 and summary["flagged"] == 2
    assert summary["worst_cases"] == 2 and summary["worst_flagged"] == pytest.approx(0.5)
    assert summary["mean_dice_flagged"] == pytest.approx(0.3)  # the flagged case without Dice is not averaged
    csv_like = [{**row, "review": str(row["review"])} for row in rows]  # "True"/"False" as metrics.csv reads back
    assert review_summary(csv_like) == summary


def test_the_summary_without_flagged_cases_and_of_one_case():
    summary = review_summary([_case(0.9, 0.8, False), _case(0.1, 0.2, False)])
    assert summary["flagged"] == 0 and math.isnan(summary["mean_dice_flagged"])
    assert summary["worst_flagged"] == 0.0 and summary["worst_cases"] == 1
    one = review_summary([{"dice": 0.4, "review": True}])
    assert one["cases"] == one["flagged"] == one["worst_cases"] == 1 and one["worst_flagged"] == 1.0
    assert one["mean_dice_flagged"] == pytest.approx(0.4) and math.isnan(one["mean_dice_unflagged"])
    none = review_summary([{"dice": math.nan, "review": True}])
    assert none["worst_cases"] == 0 and math.isnan(none["worst_flagged"])


def test_merged_rows_hold_both_functions_columns_and_refuse_a_conflict():
    merged = MergedRow([lambda item: {"dice": 0.5, "subject": "s1"}, lambda item: {"liver_ml": 1.0, "subject": "s1"}])
    assert merged({}) == {"dice": 0.5, "subject": "s1", "liver_ml": 1.0}
    with pytest.raises(ValueError, match="'subject'"):
        MergedRow([lambda item: {"subject": "s1"}, lambda item: {"subject": "s2"}])({})


def test_the_handler_adds_the_review_section_to_the_summary(tmp_path):
    dice = {"/d/case1.png": 0.9, "/d/case2.png": 0.1, "/d/case3.png": 0.8}

    def step(engine, batch):
        meta = {"filename_or_obj": f"/d/case{batch}.png"}
        return [{"image": MetaTensor(torch.zeros(1, 2, 2), meta=meta), "quality": {
            "mean_entropy": 0.9 if batch == 2 else 0.1, "mean_margin": 0.9, "foreground_fraction": 0.1}}]  # fmt: skip

    engine = Engine(step)
    row_fn = ReviewRow(MergedRow([lambda item: {"dice": dice[item["image"].meta["filename_or_obj"]]}]),
                       {"max_entropy": 0.5})  # fmt: skip
    CaseTableWriter(row_fn, str(tmp_path), "metrics", sections={"review": review_summary}).attach(engine)
    engine.run([1, 2, 3], max_epochs=1)
    review = json.loads((tmp_path / "metrics_summary.json").read_text())["review"]
    assert review["cases"] == 3 and review["flagged"] == 1 and review["worst_flagged"] == 1.0
    assert review["mean_dice_flagged"] == pytest.approx(0.1) and review["mean_dice_unflagged"] == pytest.approx(0.85)
    assert engine.state.metrics["metrics/review/worst_flagged"] == 1.0


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_evaluation_reads_the_review_rules_of_inference(name):
    bundle = ROOT / "bundles" / name
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert rules_of(bundle) == config["review_rules"]
    evaluate = json.loads((bundle / "configs" / "evaluate.json").read_text())
    assert evaluate["review_rules"]["_target_"] == "common.review.rules_of"  # read, not copied
    train = json.loads((bundle / "configs" / "train.json").read_text())
    targets = [t["_target_"] for t in train["inference_postprocessing"]]
    assert targets[:2] == ["Activationsd", "common.review.QualitySignalsd"]  # right after the softmax, as inference


def test_rules_of_a_bundle_without_a_mapping_is_refused(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.json").write_text(json.dumps({"review_rules": "@elsewhere"}))
    with pytest.raises(ValueError, match="must be a mapping"):
        rules_of(tmp_path)
    with pytest.raises(FileNotFoundError):
        rules_of(tmp_path / "missing")
