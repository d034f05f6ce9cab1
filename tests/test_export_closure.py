"""Exports vendor only the ``common`` modules a bundle imports: the closure over its configs and scripts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from common.export import common_closure, resolve_module
from common.packages import (
    config_modules,
    declared_distributions,
    distribution_names,
    imported_modules,
    needed_distributions,
)
from conftest import ROOT

COMMON = ROOT / "common"
BUNDLES = ["retinal_vessel_unet", "cardiac_mr_fcn", "liver_ct_unet3d", "lung_nodule_fcn3d", "brain_tissue_cnn2d"]
#: what every export carries so that the receiving lab can run ``python -m common.verify .``
VERIFIER = {"common/__init__.py", "common/verify.py", "common/bundle_archive.py"}
SCHEMA = "common/schemas/bundle_metadata_schema.json"
#: ``import common.x`` / ``from common.x import y`` at the start of a line of Python
IMPORT_LINE = re.compile(r"^\s*(?:import|from)\s+(common(?:\.\w+)*)(?:\s+import\s+\(?([\w\s,]+))?", re.M)


def _file(dotted: str) -> str:
    """The file (relative to the repository) of the longest prefix of ``dotted`` that is a module of ``common``."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        path = ROOT.joinpath(*parts[:end])
        for candidate in (path / "__init__.py", path.with_suffix(".py")):
            if candidate.is_file():
                return candidate.relative_to(ROOT).as_posix()
    raise AssertionError(f"{dotted}: no module of common")


def _config_names(bundle: Path) -> set[str]:
    """``common.*`` names in the bundle's configs other than the metadata (whose prose mentions classes too)."""
    names: set[str] = set()
    for config in (bundle / "configs").glob("*.json"):
        if config.name != "metadata.json":
            names |= set(re.findall(r"(?<![\w.])common(?:\.\w+)+", config.read_text()))
    return names


def _import_names(text: str) -> set[str]:
    """``common.*`` names imported by the lines of ``text`` (``from common.a import B`` gives ``common.a.B``)."""
    names: set[str] = set()
    for module, imported in IMPORT_LINE.findall(text):
        names.add(module)
        names |= {f"{module}.{item.split()[0]}" for item in imported.split(",") if item.split()}
    return names


def _script_names(bundle: Path) -> set[str]:
    """``common.*`` names imported by the bundle's scripts."""
    return set().union(*(_import_names(p.read_text()) for p in (bundle / "scripts").rglob("*.py")))


@pytest.fixture(scope="module")
def closures() -> dict[str, list[str]]:
    """The closure of every bundle, computed once."""
    return {name: common_closure(ROOT / "bundles" / name) for name in BUNDLES}


@pytest.mark.parametrize("name", BUNDLES)
def test_closure_holds_every_referenced_module_and_what_they_import(closures, name):
    bundle, closure = ROOT / "bundles" / name, set(closures[name])
    referenced = _config_names(bundle) | _script_names(bundle)
    assert referenced, "the bundle references no common module"
    missing = {_file(n) for n in referenced} - closure
    assert not missing, missing
    assert VERIFIER | {SCHEMA} <= closure
    for file in closure:
        parts = Path(file).parts
        for end in range(1, len(parts) - 1):  # every package on the way holds its __init__.py
            assert "/".join(parts[:end]) + "/__init__.py" in closure, file
        if file.endswith(".py"):
            text = (ROOT / file).read_text()
            assert {_file(n) for n in _import_names(text)} <= closure, file  # closed under absolute imports
    if "common/metrics/centerline.py" in closure:
        assert "common/metrics/binary.py" in closure  # imported relatively (``from .binary import ...``)


@pytest.mark.parametrize("name", BUNDLES)
def test_closure_leaves_out_tooling_the_bundle_does_not_import(closures, name):
    closure = closures[name]
    assert "common/export.py" not in closure  # the verifier no longer imports the exporter
    assert "common/dicom.py" not in closure  # no config or script of any bundle reads DICOM through it
    # the repository's tools: the bundle runner, the bundle profiles
    assert "common/runner.py" not in closure and "common/profile.py" not in closure
    assert not [f for f in closure if "__pycache__" in f or f.endswith(".pyc")]


def test_a_bundle_importing_nothing_gets_the_verifier_alone(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.json").write_text(json.dumps({"network_def": {"_target_": "UNet"}}))
    assert common_closure(tmp_path) == sorted(VERIFIER | {SCHEMA})


def _write(root: Path, files: dict[str, str]) -> None:
    """Write ``files`` (relative path -> text) under ``root``."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_closure_of_a_tiny_bundle_follows_relative_imports(tmp_path):
    _write(
        tmp_path / "lib",
        {
            "common/__init__.py": "",
            "common/a.py": "from .b import helper\n",
            "common/b.py": "def helper() -> int:\n    return 1\n",
            "common/unused.py": "import common.b\n",
        },
    )
    _write(tmp_path / "bundle", {"configs/inference.json": json.dumps({"x": "$common.a.helper()"})})
    closure = common_closure(tmp_path / "bundle", tmp_path / "lib" / "common", always=())
    assert closure == ["common/__init__.py", "common/a.py", "common/b.py"]


def test_closure_of_a_fake_bundle_is_exact(tmp_path):
    common = tmp_path / "lib" / "common"
    _write(
        tmp_path / "lib",
        {
            "common/__init__.py": '"""A fake shared package."""\n',
            "common/a.py": "from .b import helper\n",
            "common/b.py": 'SCHEMA = "schemas/used.json"\n\ndef helper() -> int:\n    return 1\n',
            "common/check.py": "def run() -> None:\n    from common import b  # imported when called\n",
            "common/pkg/__init__.py": "from .c import C\n",
            "common/pkg/c.py": "from ..a import helper\n\nclass C:\n    pass\n",
            "common/pkg/d.py": "import common.unused\n",
            "common/tool.py": "from common.pkg.d import *\n",
            "common/unused.py": "",
            "common/schemas/used.json": "{}",
            "common/schemas/other.json": "{}",
            "common/__pycache__/a.cpython-311.pyc": "",
        },
    )
    configs = {
        "network_def": {"_target_": "common.pkg.C"},
        "description": "prose naming common.unused is not a reference",
        "loader": "$from common import check",
    }
    _write(
        tmp_path / "bundle",
        {
            "configs/inference.json": json.dumps(configs),
            "scripts/__init__.py": "",
            "scripts/helpers.py": "from . import other\nfrom common.tool import *\n",
        },
    )
    closure = common_closure(tmp_path / "bundle", common, always=("common.check.run",))
    assert closure == [
        "common/__init__.py",
        "common/a.py",
        "common/b.py",
        "common/check.py",
        "common/pkg/__init__.py",
        "common/pkg/c.py",
        "common/pkg/d.py",
        "common/schemas/used.json",
        "common/tool.py",
        "common/unused.py",
    ]
    (tmp_path / "bundle" / "scripts" / "helpers.py").unlink()  # without the script, tool and what it imports go
    closure = common_closure(tmp_path / "bundle", common, always=())
    assert "common/tool.py" not in closure and "common/pkg/d.py" not in closure and "common/unused.py" not in closure
    assert "common/check.py" in closure and "common/pkg/c.py" in closure


def test_names_resolve_to_the_longest_module_prefix():
    assert resolve_module(COMMON, "common.networks.FCN") == "common.networks"
    assert resolve_module(COMMON, "common.metrics.clinical.voxel_volume_ml") == "common.metrics.clinical"
    assert resolve_module(COMMON, "common.transforms.CheckImaged") == "common.transforms"
    assert resolve_module(COMMON, "common.no_such_module.x") == "common"
    assert resolve_module(COMMON, "monai.networks.nets.UNet") is None


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_declares_every_package_the_shipped_code_imports(name):
    bundle = ROOT / "bundles" / name
    vendored = [ROOT / f for f in common_closure(bundle) if f.endswith(".py")]
    needed = needed_distributions(bundle, vendored)
    declared = declared_distributions(bundle / "configs" / "metadata.json")
    assert needed <= set(declared), f"{name}: metadata.json lacks {sorted(needed - set(declared))}"
    assert {"fire", "pytorch-ignite"} <= needed and not needed & {"monai", "torch", "numpy", "common", "scripts"}


def test_imports_are_read_from_code_and_configs(tmp_path):
    code = tmp_path / "a.py"
    code.write_text(
        "import os\nimport scipy.ndimage\nfrom skimage import measure\nfrom . import sibling\n"
        "def f():\n    import yaml\n"
    )
    assert imported_modules([code]) == {"os", "scipy", "skimage", "yaml"}
    config = tmp_path / "c.json"
    config.write_text('{"imports": ["$import nibabel", "$from PIL import Image"], "x": {"_target_": "ignite.X"}}')
    assert config_modules([config]) == {"nibabel", "PIL", "ignite"}
    assert distribution_names({"os", "scipy", "skimage", "PIL", "common"}) == {"scipy", "scikit-image", "pillow"}
    with pytest.raises(ValueError, match="no installed distribution provides the imported module 'nowhere_pkg'"):
        distribution_names({"nowhere_pkg"})
