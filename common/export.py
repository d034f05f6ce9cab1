"""Export a bundle for another lab: one self-contained folder and zip archive with trained weights, TorchScript,
checksums, the ``common`` modules its configs and scripts import vendored and the measured results in the model card.

    python -m common.export bundles/<name> --out DIR [--ckpt PATH] [--metrics metrics_summary.json]
        [--trained_on "text"] [--base_url URL]

writes ``DIR/<name>/`` and ``DIR/<name>_v<version>.zip`` (plus ``.sha256``); check them with ``common.verify``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import fire
import torch

from common.bundle_archive import (
    IGNORED,
    check_metadata,
    copy_tree,
    file_hash,
    make_zip,
    weight_files,
    write_large_files,
)
from common.packages import OWN_FIELDS, PACKAGES_KEY, declared_distributions, installed_versions, needed_distributions
from common.training_statistics import FILENAME as STATISTICS_FILE
from common.verify import NETWORK_CONFIG, build_network, bundle_on_path, example_input_shape, load_weights

#: the shared package; the modules of it that a bundle needs are copied into its export so ``import common``
#: resolves from the bundle root
COMMON = Path(__file__).resolve().parent
#: modules every export carries, whatever the bundle imports: the verifier its model card tells receivers to run
ALWAYS = ("common.verify", "common.bundle_archive")
#: what an exported bundle holds besides its weights (missing optional entries are skipped)
BUNDLE_ENTRIES = ("configs", "docs", "scripts", "LICENSE")
#: the model card's note that this copy, unlike the repository, holds weights
SHIPPED_NOTE = (
    "Added at export: this copy of the bundle ships trained weights in `models/` (`model.pt`, and `model.ts` for "
    "TorchScript); what the sections above say about weights not being shipped refers to the source repository."
)
#: statistics of a metrics summary shown in the model card, in this order
STATS = ("mean", "std", "median", "min", "max")


def _module_file(common: Path, module: str) -> Path | None:
    """The file of ``module`` (``pkg.a.b``) under the package folder ``common``: ``a/b.py`` or ``a/b/__init__.py``."""
    parts = module.split(".")[1:]
    folder = common.joinpath(*parts)
    if (folder / "__init__.py").is_file():
        return folder / "__init__.py"
    if parts and folder.with_suffix(".py").is_file():
        return folder.with_suffix(".py")
    return None


def resolve_module(common: Path, dotted: str) -> str | None:
    """The longest prefix of ``dotted`` (``common.a.b.C``) that is a module or package under ``common``, or None."""
    parts = dotted.split(".")
    if parts[0] != common.name:
        return None
    for end in range(len(parts), 0, -1):
        module = ".".join(parts[:end])
        if _module_file(common, module) is not None:
            return module
    return None


def names_in_code(text: str, package: str = "common") -> set[str]:
    """Dotted names under ``package`` in a config string or code snippet (``pkg.a.B``, ``from pkg.a import B``)."""
    names = set(re.findall(rf"(?<![\w.]){package}(?:\.[A-Za-z_]\w*)*", text))
    for base, imported in re.findall(rf"\bfrom\s+({package}(?:\.\w+)*)\s+import\s+\(?([\w\s,]+)", text):
        names |= {f"{base}.{item.split()[0]}" for item in imported.split(",") if item.split()}
    return names


def _imports_in_strings(text: str, package: str = "common") -> set[str]:
    """Modules under ``package`` imported by Python code held in a string (e.g. run with ``python -c``)."""
    pattern = rf"(?:^|[;\s])(?:import|from)\s+({package}(?:\.\w+)*)"
    found = set(re.findall(pattern, text))
    return found | {n for n in names_in_code(text, package) if any(n.startswith(f"{f}.") for f in found)}


def config_references(bundle: Path, package: str = "common") -> set[str]:
    """Dotted names under ``package`` in the ``_target_`` values and ``$`` expressions of ``bundle/configs/*.json``."""

    def strings(node: Any, key: str = "") -> Iterable[tuple[str, str]]:
        if isinstance(node, Mapping):
            for k, v in node.items():
                yield from strings(v, str(k))
        elif isinstance(node, list):
            for v in node:
                yield from strings(v, key)
        elif isinstance(node, str):
            yield key, node

    names: set[str] = set()
    for config in sorted((bundle / "configs").glob("*.json")):
        for key, text in strings(json.loads(config.read_text())):
            if key == "_target_" or text.startswith("$"):
                names |= names_in_code(text, package)
    return names


def python_references(source: Path, module: str | None = None, package: str = "common") -> tuple[set[str], set[str]]:
    """Dotted names under ``package`` that a Python file imports (relative imports resolved when ``module`` names
    it) and the string constants it holds; imports inside functions count, as they run when called."""
    tree = ast.parse(source.read_text(), filename=str(source))
    here = (module or "").split(".")
    if source.name != "__init__.py":
        here = here[:-1]  # the package holding a plain module
    names: set[str] = set()
    strings: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None or node.level - 1 >= len(here):
                    continue  # relative to a package outside ``package`` (e.g. the bundle's ``scripts``)
                base = ".".join(here[: len(here) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names if alias.name != "*"}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
            names |= _imports_in_strings(node.value, package)
    return {n for n in names if n == package or n.startswith(f"{package}.")}, strings


def _data_files(common: Path) -> list[Path]:
    """Files under ``common`` other than Python modules and caches (schemas and other data)."""
    return [
        path
        for path in sorted(common.rglob("*"))
        if path.is_file()
        and path.suffix != ".py"
        and not any(any(Path(part).match(pattern) for pattern in IGNORED) for part in path.relative_to(common).parts)
    ]


def common_closure(bundle: str | Path, common: str | Path = COMMON, always: Sequence[str] = ALWAYS) -> list[str]:
    """Files of ``common`` (paths like ``common/data.py``) that the exported ``bundle`` needs: the modules its
    configs and ``scripts/*.py`` reference and those in ``always``, every module they import in turn, the
    ``__init__.py`` of every package on their paths, and the data files whose names their code mentions."""
    bundle, common = Path(bundle), Path(common)
    package = common.name
    seeds = set(always) | config_references(bundle, package)
    for script in sorted((bundle / "scripts").rglob("*.py")):
        if "__pycache__" not in script.parts:
            seeds |= python_references(script, None, package)[0]
    needed: dict[str, Path] = {}
    strings: set[str] = set()
    queue = sorted(seeds)
    while queue:
        module = resolve_module(common, queue.pop())
        if module is None or module in needed:
            continue
        source = _module_file(common, module)
        assert source is not None
        needed[module] = source
        parts = module.split(".")
        queue += [".".join(parts[:end]) for end in range(1, len(parts))]  # importing a.b.c runs a and a.b first
        imported, constants = python_references(source, module, package)
        queue += sorted(imported)
        strings |= constants
    files = set(needed.values())
    files |= {path for path in _data_files(common) if any(path.name in text for text in strings)}
    return sorted(path.relative_to(common.parent).as_posix() for path in files)


def vendor_common(bundle: Path, root: Path, common: Path = COMMON) -> list[str]:
    """Copy the files of ``common_closure`` into ``root/<package>/``; return them."""
    files = common_closure(bundle, common)
    for file in files:
        target = root / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(common.parent / file, target)
    return files


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


def install_line(meta: Mapping[str, Any]) -> str:
    """The ``pip install`` command for what the exported bundle needs: MONAI, PyTorch and NumPy at the versions its
    metadata names, and every package of ``PACKAGES_KEY``."""
    pins = {name: meta[field] for name, field in OWN_FIELDS.items() if field in meta}
    pins.update(meta.get(PACKAGES_KEY, {}))
    return "pip install " + " ".join(f'"{name}=={version}"' for name, version in pins.items())


def install_section(meta: Mapping[str, Any]) -> str:
    """The model card section saying what to install to run the exported bundle, and nothing more."""
    lines = [
        "## What to install",
        "",
        "Everything the configs, `scripts/` and the vendored `common/` import, at the versions this export was made "
        "with (`metadata.json`); nothing else is needed (the CPU build of PyTorch is enough to run it):",
        "",
        "```",
        install_line(meta),
        "```",
    ]
    return "\n".join(lines) + "\n"


def vendored_section(files: Sequence[str]) -> str:
    """The model card section listing the vendored ``common`` files."""
    lines = [
        "## Vendored code",
        "",
        "`common/` holds only the modules of the source repository's shared package that the configs and `scripts/`"
        " import (directly or through other modules), plus the verifier `common/verify.py` and its schema:",
        "",
    ]
    lines += [f"- `{file}`" for file in files]
    return "\n".join(lines) + "\n"


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
    vendored = vendor_common(bundle, root)
    print(f"vendored {len(vendored)} files of common: {', '.join(vendored)}")
    guide = COMMON.parent / "docs" / "sharing.md"  # the repository's guide
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
    statistics = ckpt.parent / STATISTICS_FILE  # what the review flags compare new cases with
    if statistics.is_file():
        shutil.copy2(statistics, root / "models" / STATISTICS_FILE)
    else:
        print(f"{statistics}: not there (weights trained before training recorded it): the exported bundle's review "
              f"flags use the documented ranges and give no input warnings")  # fmt: skip

    meta_file = root / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    needed = needed_distributions(root, [root / f for f in vendored if f.endswith(".py")])
    meta[PACKAGES_KEY] = installed_versions(needed | set(declared_distributions(meta_file)))
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
    results = results_section(meta["version"], summary, trained_on, meta["weights_sha256"])
    card.write_text(previous + results + "\n" + install_section(meta) + "\n" + vendored_section(vendored))
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
