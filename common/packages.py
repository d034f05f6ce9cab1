"""The Python distributions a bundle's code needs: everything its configs, ``scripts/`` and vendored ``common``
modules import, named as ``pip`` installs them, for the package versions in an exported bundle's metadata."""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

#: distributions the bundle metadata names in fields of their own
OWN_FIELDS = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
#: distributions every bundle needs without importing them itself: ``monai.bundle``'s command line
ALWAYS = ("fire",)
#: the bundle's own packages, shipped in its folder
LOCAL = {"common", "scripts"}


def imported_modules(files: Iterable[Path]) -> set[str]:
    """Top-level names of the modules that Python files import (absolute imports, inside functions too)."""
    names: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def config_modules(configs: Iterable[Path]) -> set[str]:
    """Top-level names of the modules that config files import (``$import x``, ``$from x import y``) or name in a
    ``_target_`` (``package.module.Class``)."""
    names: set[str] = set()
    for config in configs:
        text = config.read_text()
        names |= set(re.findall(r'"\$(?:import|from)\s+([A-Za-z_]\w*)', text))
        names |= set(re.findall(r'"_target_":\s*"([A-Za-z_]\w*)\.', text))
    return names


def distribution_names(modules: Iterable[str]) -> set[str]:
    """The installed distributions (lower-case ``pip`` names) that provide ``modules``; standard-library and local
    modules are skipped, and a module no installed distribution provides is an error."""
    provided = metadata.packages_distributions()
    names: set[str] = set()
    for module in modules:
        if module in sys.stdlib_module_names or module in LOCAL or module == "__future__":
            continue
        if module not in provided:
            raise ValueError(f"no installed distribution provides the imported module {module!r}.")
        names |= {metadata.distribution(d).metadata["Name"].lower() for d in provided[module]}
    return names


def needed_distributions(bundle: Path, vendored: Iterable[Path] = ()) -> set[str]:
    """Distributions the bundle's configs, ``scripts/*.py`` and the ``vendored`` files import, those every bundle
    needs (``ALWAYS``), without the ones metadata names in fields of their own (``OWN_FIELDS``)."""
    scripts = [p for p in sorted((bundle / "scripts").rglob("*.py")) if "__pycache__" not in p.parts]
    modules = config_modules(sorted((bundle / "configs").glob("*.json"))) | imported_modules([*scripts, *vendored])
    return (distribution_names(modules) | set(ALWAYS)) - set(OWN_FIELDS)


#: the metadata key listing the packages a bundle needs: the name the bundle schema of its ``schema`` URL
#: (meta_schema_20220324) requires; MONAI reads it as ``required_packages_version``
PACKAGES_KEY = "optional_packages_version"


def declared_distributions(meta_file: Path) -> dict[str, str]:
    """The packages a ``metadata.json`` declares (``PACKAGES_KEY``), with lower-case names."""
    meta = json.loads(meta_file.read_text())
    return {name.lower(): version for name, version in meta.get(PACKAGES_KEY, {}).items()}


def installed_versions(names: Iterable[str]) -> dict[str, str]:
    """``{name: installed version}`` for distributions, in name order."""
    return {name: metadata.version(name) for name in sorted(names)}
