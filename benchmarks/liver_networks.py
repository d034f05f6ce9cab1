"""Measure the effect of the liver bundle's network choice: the same data, configs and epochs, only ``network_def``
changes. Every run is the bundle run as a user types it (train, then evaluate on the test split).

    python benchmarks/liver_networks.py --output_dir runs/liver_networks --max_epochs 60

Writes ``networks.md`` and ``networks.csv`` (Dice, HD95, lesion detection, training time, parameters) in
``output_dir``.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.profile import bundle_names, describe  # noqa: E402
from common.runner import run_bundle  # noqa: E402
from synthetic import write_dataset  # noqa: E402

TASK = "liver"
#: the bundle doing the liver task (its ``tooling.json`` names the task)
BUNDLE = next(describe(name).root for name in bundle_names() if describe(name).task == TASK)

#: ``network_def`` of each variant; ``residual_unet`` is the bundle's own (``configs/train.json``)
VARIANTS: dict[str, dict | None] = {
    "residual_unet": None,
    "plain_unet": {  # the textbook double-convolution U-Net (two 3x3x3 conv + norm + ReLU per level, no residuals)
        "_target_": "BasicUNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": "@num_classes",
        "features": [16, 32, 64, 128, 256, 16],
        "norm": "instance",
    },
}

SUMMARY_KEYS = ("dice_liver", "hd95_liver_mm", "dice_tumour", "tumour_sensitivity", "false_positive_tumours")


def count_parameters(network_def: dict | None) -> int:
    """Trainable parameters of a variant, built from the bundle's config."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    if network_def is not None:
        parser["network_def"] = network_def
    return sum(p.numel() for p in parser.get_parsed_content("network_def").parameters() if p.requires_grad)


def main(
    output_dir: str = "runs/liver_networks",
    dataset_dir: str | None = None,
    max_epochs: int = 60,
    val_interval: int = 10,
    variants: str = ",".join(VARIANTS),
    num_train: int = 16,
    num_test: int = 4,
    num_workers: int = 2,
    seed: int = 0,
) -> None:
    """Train and evaluate each network variant on the same data; print and write the comparison table."""
    out = Path(output_dir).resolve()
    data = Path(dataset_dir).resolve() if dataset_dir else out / "data"
    if not (data / "dataset.json").is_file():
        write_dataset(TASK, data, num_train, num_test, seed, size=160)
    rows = []
    for name in variants.split(",") if isinstance(variants, str) else variants:
        run = out / name
        configs = ["train.json"]
        if VARIANTS[name] is not None:
            run.mkdir(parents=True, exist_ok=True)
            (run / "network.json").write_text(json.dumps({"network_def": VARIANTS[name]}, indent=2))
            configs.append(str(run / "network.json"))
        common = {"dataset_dir": data, "ckpt_path": run / "models" / "model.pt", "num_workers": num_workers}
        start = time.time()
        run_bundle(
            BUNDLE, configs, **common, output_dir=run / "train", max_epochs=max_epochs, val_interval=val_interval
        )
        train_s = time.time() - start
        run_bundle(BUNDLE, configs[:1] + ["evaluate.json"] + configs[1:], **common, output_dir=run / "eval")
        summary = json.loads((run / "eval" / "metrics_summary.json").read_text())
        row = {"network": name, "parameters": count_parameters(VARIANTS[name]), "train_s": round(train_s, 1)}
        row.update({k: round(summary[k]["mean"], 4) for k in SUMMARY_KEYS if k in summary})
        rows.append(row)
        print(json.dumps(row), flush=True)
    columns = list(rows[0])
    with open(out / "networks.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    table = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    table += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = f"{max_epochs} epochs each, {num_train} synthetic training cases, {num_test} test cases\n\n" + "\n".join(
        table
    )
    (out / "networks.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    fire.Fire(main)
