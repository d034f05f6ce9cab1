"""Export a bundle for another lab: one self-contained folder and zip archive with trained weights, TorchScript,
checksums, the ``common`` package vendored and the measured results in the model card.

    python -m common.export bundles/<name> --out DIR [--ckpt PATH] [--metrics metrics_summary.json]
        [--trained_on "text"] [--base_url URL]

writes ``DIR/<name>/`` and ``DIR/<name>_v<version>.zip`` (plus ``.sha256``); check them with ``common.verify``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fire
import torch

from common.bundle_archive import (
    check_metadata,
    copy_tree,
    file_hash,
    make_zip,
    weight_files,
    write_large_files,
)

#: the shared package, copied into every exported bundle so ``import common`` resolves from the bundle root
COMMON = Path(__file__).resolve().parent
#: what an exported bundle holds besides its weights (missing optional entries are skipped)
BUNDLE_ENTRIES = ("configs", "docs", "scripts", "LICENSE")
#: the config whose ``network_def`` is exported and run by receivers
NETWORK_CONFIG = "configs/inference.json"
#: the model card's note that this copy, unlike the repository, holds weights
SHIPPED_NOTE = (
    "Added at export: this copy of the bundle ships trained weights in `models/` (`model.pt`, and `model.ts` for "
    "TorchScript); what the sections above say about weights not being shipped refers to the source repository."
)
#: statistics of a metrics summary shown in the model card, in this order
STATS = ("mean", "std", "median", "min", "max")


@contextmanager
def bundle_on_path(root: Path) -> Iterator[None]:
    """Put a bundle root first on ``sys.path`` (for its ``scripts``) while parsing its configs."""
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))


def example_input_shape(meta: Mapping[str, Any], n: int = 4, any_size: int = 64) -> tuple[int, ...]:
    """``(1, channels, *spatial)`` of an input the metadata allows (``16*n`` -> 64, ``*`` -> ``any_size``)."""
    from monai.bundle.scripts import _get_fake_spatial_shape

    image = next(iter(meta["network_data_format"]["inputs"].values()))
    spatial = _get_fake_spatial_shape(image["spatial_shape"], p=1, n=n, any=any_size)
    return (1, int(image["num_channels"]), *spatial)


def build_network(root: Path, config: str = NETWORK_CONFIG) -> torch.nn.Module:
    """Instantiate ``network_def`` from a bundle's config, with ``bundle_root`` pointing at ``root``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(root / config)
    parser["bundle_root"] = str(root)
    with bundle_on_path(root):
        return parser.get_parsed_content("network_def", instantiate=True)


def load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The model's state dict from a checkpoint (plain, or ``{"model": ...}`` from ``CheckpointSaver``), read with
    ``weights_only=True``; optimizer and trainer state are dropped, a DistributedDataParallel prefix removed."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{ckpt}: not a model state dict (a mapping of parameter names to tensors).")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _fmt(value: Any) -> str:
    """A metric value for the model card table."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def results_section(
    version: str, summary: Mapping[str, Any] | None, trained_on: str | None, hashes: Mapping[str, str]
) -> str:
    """The model card section describing the shipped weights: training data, measured metrics, checksums."""
    lines = [f"## Shipped weights (version {version})", ""]
    lines += [SHIPPED_NOTE, ""]
    lines += [f"Trained on: {trained_on}" if trained_on else "Trained on: not stated by the exporter.", ""]
    if summary:
        cases = summary.get("cases", "?")
        lines += [
            f"Measured on {cases} evaluation cases with these exact weights (`evaluate.json` metrics summary):",
            "",
        ]
        lines += ["| metric | " + " | ".join(STATS) + " |", "| --- |" + " --- |" * len(STATS)]
        for name, stats in summary.items():
            if isinstance(stats, Mapping) and "mean" in stats:
                lines.append(f"| {name} | " + " | ".join(_fmt(stats.get(s, "")) for s in STATS) + " |")
    else:
        lines += ["No metrics summary was given at export: the performance of these weights is not measured here."]
    lines += ["", "Weight files (SHA-256, also in `large_files.yml` and `metadata.json`):", ""]
    lines += [f"- `{path}`: `{digest}`" for path, digest in hashes.items()]
    lines += [
        "",
        "Check them before use: `python -m common.verify .` from the bundle folder (see `docs/sharing.md`).",
        "",
    ]
    return "\n".join(lines)


def _export_onnx(root: Path, meta: Mapping[str, Any]) -> None:
    """Also write ``models/model.onnx`` when ``onnx`` is importable and the network exports; otherwise say why not."""
    if importlib.util.find_spec("onnx") is None:
        print("ONNX: skipped, the onnx package is not installed (pip install onnx to add models/model.onnx)")
        return
    from monai.bundle import onnx_export

    target = root / "models" / "model.onnx"
    try:
        with bundle_on_path(root):
            onnx_export(
                net_id="network_def",
                filepath=str(target),
                ckpt_file=str(root / "models" / "model.pt"),
                meta_file=str(root / "configs" / "metadata.json"),
                config_file=str(root / NETWORK_CONFIG),
                input_shape=list(example_input_shape(meta)),
                bundle_root=str(root),
            )
    except Exception as e:  # the network may use operators ONNX lacks: the bundle is still complete without it
        target.unlink(missing_ok=True)
        print(f"ONNX: skipped, export failed ({type(e).__name__}: {e})")


def _build(
    bundle: Path, root: Path, ckpt: Path, summary: dict | None, trained_on: str | None, base_url: str | None
) -> dict[str, Any]:
    """Write the exported bundle into the empty folder ``root``; return its metadata."""
    for entry in BUNDLE_ENTRIES:
        source = bundle / entry
        if source.is_dir():
            copy_tree(source, root / entry)
        elif source.is_file():
            shutil.copy2(source, root / entry)
    copy_tree(COMMON, root / "common")
    guide = COMMON.parent / "docs" / "sharing.md"  # the repository's guide (or, re-exported, the bundle's own copy)
    if guide.is_file() and not (root / "docs" / "sharing.md").exists():
        (root / "docs").mkdir(exist_ok=True)
        shutil.copy2(guide, root / "docs" / "sharing.md")

    state = load_weights(ckpt)
    net = build_network(root)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{ckpt}: the weights do not fit network_def of {bundle / NETWORK_CONFIG}: {e}") from e
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")

    meta_file = root / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    if summary:
        meta["eval_metrics"] = {
            f"mean_{name}": stats["mean"]
            for name, stats in summary.items()
            if isinstance(stats, dict) and "mean" in stats
        }
    if trained_on:
        meta["trained_on"] = trained_on
    meta_file.write_text(json.dumps(meta, indent=4) + "\n")

    from monai.bundle import ckpt_export

    with bundle_on_path(root):
        ckpt_export(
            net_id="network_def",
            filepath=str(root / "models" / "model.ts"),
            ckpt_file=str(root / "models" / "model.pt"),
            meta_file=str(meta_file),
            config_file=str(root / NETWORK_CONFIG),
            bundle_root=str(root),
        )
    _export_onnx(root, meta)

    weights = weight_files(root)
    write_large_files(root, weights, base_url)
    meta["weights_sha256"] = {path: file_hash(root / path) for path in weights}
    meta_file.write_text(json.dumps(meta, indent=4) + "\n")
    card = root / "docs" / "README.md"
    card.parent.mkdir(exist_ok=True)
    previous = card.read_text().rstrip() + "\n\n" if card.is_file() else ""
    card.write_text(previous + results_section(meta["version"], summary, trained_on, meta["weights_sha256"]))
    return meta


def export(
    bundle: str,
    out: str,
    ckpt: str | None = None,
    metrics: str | None = None,
    trained_on: str | None = None,
    base_url: str | None = None,
) -> str:
    """Export ``bundle`` with trained weights into ``out/<name>`` and ``out/<name>_v<version>.zip``; return the zip.

    Args:
        bundle: the bundle folder, e.g. ``bundles/retinal_vessel_unet``.
        out: folder for the exported bundle and its archive (an earlier export of the same bundle is replaced).
        ckpt: trained weights (default ``bundle/models/model.pt``), plain or a ``CheckpointSaver`` checkpoint.
        metrics: ``metrics_summary.json`` written by ``evaluate.json`` for these weights, shown in the model card.
        trained_on: the data the weights were trained on, in words, for the model card and metadata.
        base_url: where ``out`` will be served, to put download ``url`` entries in ``large_files.yml``.
    """
    bundle = Path(bundle).resolve()
    trained_on = None if trained_on is None else str(trained_on)  # fire turns a bare number into an int
    meta = check_metadata(bundle / "configs" / "metadata.json", COMMON / "schemas" / "bundle_metadata_schema.json")
    name, version = bundle.name, meta["version"]
    ckpt_path = Path(ckpt) if ckpt else bundle / "models" / "model.pt"
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: no trained weights; train the bundle or give --ckpt.")
    summary = json.loads(Path(metrics).read_text()) if metrics else None
    if summary is not None and not isinstance(summary, dict):
        raise ValueError(f"{metrics}: expected a metrics summary (a JSON object of metric -> mean, std, ...).")

    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{name}.") as tmp:
        root = Path(tmp) / name
        root.mkdir()
        _build(bundle, root, ckpt_path, summary, trained_on, base_url)
        archive = make_zip(root, Path(tmp) / f"{name}_v{version}.zip")
        target = out_dir / name
        if target.exists():
            shutil.rmtree(target)
        root.rename(target)
        final = out_dir / archive.name
        archive.replace(final)
    digest = file_hash(final)
    final.with_name(final.name + ".sha256").write_text(f"{digest}  {final.name}\n")
    print(f"exported {name} v{version}: {target}")
    print(f"archive {final} sha256 {digest}")
    print(f"check it with: python -m common.verify {final}")
    return str(final)


if __name__ == "__main__":
    fire.Fire(export)
