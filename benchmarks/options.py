"""Command-line values of the benchmark scripts as fire passes them: lists and mappings given as text."""

from __future__ import annotations

from typing import Any

import yaml


def as_tuple(value: Any, kind: type = str) -> tuple:
    """A tuple of ``kind`` from a tuple, a list, a single value or a comma-separated string (fire passes ``a,b``
    as a tuple or a string); blank entries dropped."""
    if isinstance(value, str):
        value = value.split(",")
    elif not isinstance(value, (list, tuple)):
        value = [value]
    items = [v.strip() if isinstance(v, str) else v for v in value]
    return tuple(kind(v) for v in items if v != "")


def as_mapping(value: Any, option: str = "the option") -> dict:
    """A dict from a dict or from YAML text (fire leaves ``"{lung: /data/lung}"``, a path and not a Python literal,
    as a string); anything else is refused with an example."""
    parsed = yaml.safe_load(value) if isinstance(value, str) else value
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise ValueError(f"--{option} must map tasks to values, e.g. \"{{lung: /data/lung}}\", got {value!r}")
    return dict(parsed)
