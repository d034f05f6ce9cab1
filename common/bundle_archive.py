"""Files of a shared bundle: checksums, ``large_files.yml``, copying without caches, reproducible zip archives and
safe unpacking."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import yaml

#: the weight files of a bundle, listed with their checksums in ``large_files.yml``
WEIGHT_SUFFIXES = (".pt", ".ts", ".onnx")
#: hash types ``large_files.yml`` may name (those of ``monai.apps.utils.check_hash``)
HASH_TYPES = ("md5", "sha1", "sha256", "sha512")
#: names left out when a folder is copied into a bundle: caches, build and test leftovers
IGNORED = ("__pycache__", "*.pyc", "*.pyo", "*.egg-info", ".pytest_cache", ".ruff_cache", ".DS_Store")
#: a fixed time stamp for zip members, so the same files always give the same archive (and checksum)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class BundleError(ValueError):
    """A bundle that must not be used: one message naming the file and what is wrong with it."""


def check_metadata(meta_file: str | os.PathLike, schema_file: str | os.PathLike) -> dict[str, Any]:
    """Read ``metadata.json`` and validate it against the bundle metadata schema, raising a one-line ``BundleError``."""
    meta_file, schema_file = Path(meta_file), Path(schema_file)
    for path in (meta_file, schema_file):
        if not path.is_file():
            raise BundleError(f"{path}: missing.")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{meta_file}: not valid JSON ({e}).") from e
    schema = json.loads(schema_file.read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(meta))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise BundleError(f"{meta_file}: fails the metadata schema {schema_file.name} at {where}: {error.message}")
    return meta


def file_hash(path: str | os.PathLike, hash_type: str = "sha256") -> str:
    """Hex digest of a file's contents (``sha256`` unless another of ``HASH_TYPES`` is named)."""
    if hash_type not in HASH_TYPES:
        raise ValueError(f"unsupported hash type {hash_type!r}, expected one of {', '.join(HASH_TYPES)}")
    digest = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a folder without caches and build leftovers (``IGNORED``)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*IGNORED))


def weight_files(root: str | os.PathLike) -> list[str]:
    """Paths, relative to the bundle root and with ``/``, of the weight files under ``root/models``."""
    models = Path(root) / "models"
    if not models.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in models.rglob("*") if p.suffix in WEIGHT_SUFFIXES)


def write_large_files(root: str | os.PathLike, paths: Sequence[str], base_url: str | None = None) -> Path:
    """Write ``root/large_files.yml`` (MONAI Model Zoo format) with the SHA-256 of each of ``paths``.

    Each entry has ``path`` (relative to the bundle root), ``hash_val`` and ``hash_type: sha256``, and ``url``
    (``base_url/<bundle folder>/<path>``) when ``base_url`` is given, for a bundle hosted as a folder.
    """
    root = Path(root)
    entries = []
    for path in paths:
        entry: dict[str, Any] = {"path": path}
        if base_url:
            entry["url"] = f"{base_url.rstrip('/')}/{root.name}/{path}"
        entry.update(hash_val=file_hash(root / path), hash_type="sha256")
        entries.append(entry)
    target = root / "large_files.yml"
    target.write_text(yaml.safe_dump({"large_files": entries}, sort_keys=False))
    return target


def read_large_files(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of ``root/large_files.yml``, raising ``BundleError`` when the file is missing or malformed."""
    source = Path(root) / "large_files.yml"
    if not source.is_file():
        raise BundleError(f"{source}: missing; the bundle's weights cannot be checked without it.")
    try:
        content = yaml.safe_load(source.read_text())
    except yaml.YAMLError as e:
        raise BundleError(f"{source}: not valid YAML ({e}).") from e
    entries = content.get("large_files") if isinstance(content, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BundleError(f"{source}: expected a non-empty 'large_files' list.")
    for entry in entries:
        if not isinstance(entry, dict) or not {"path", "hash_val", "hash_type"} <= set(entry):
            raise BundleError(f"{source}: every entry needs 'path', 'hash_val' and 'hash_type', got {entry!r}.")
    return entries


def check_weights(bundle_root: str | os.PathLike, ckpt_path: str | os.PathLike) -> None:
    """Before weights are loaded: ``ckpt_path`` must exist and, when ``bundle_root/large_files.yml`` lists it, have
    the listed checksum, else a one-line ``BundleError``. Weights it does not list (a lab's own training) pass."""
    root = Path(bundle_root)
    if not Path(ckpt_path).is_file():
        raise BundleError(
            f"{ckpt_path}: no weights there; train the bundle first (train.json writes models/model.pt) or pass "
            f"--ckpt_path with the path of a trained model.pt."
        )
    if not (root / "large_files.yml").is_file():
        return
    ckpt = Path(ckpt_path)
    for entry in read_large_files(root):
        if not ckpt.is_file() or inside(root, entry["path"]).resolve() != ckpt.resolve():
            continue
        actual = file_hash(ckpt, entry["hash_type"])
        if actual != entry["hash_val"]:
            raise BundleError(
                f"{ckpt}: its {entry['hash_type']} {actual[:16]}... is not the {entry['hash_val'][:16]}... listed in "
                f"{root / 'large_files.yml'}: the weights are corrupted or were replaced; download the bundle again "
                f"(weights you trained yourself: pass them as --ckpt_path from another folder, or drop their entry "
                f"from large_files.yml)."
            )


def inside(root: str | os.PathLike, relative: str) -> Path:
    """``root/relative``, raising ``BundleError`` when ``relative`` is absolute or climbs out of ``root``."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if not parts or parts[0] == "/" or ".." in parts or ":" in parts[0]:
        raise BundleError(f"{relative}: a path outside the bundle folder.")
    return Path(root, *parts)


def _files(folder: Path) -> Iterable[Path]:
    """Every file under ``folder``, in a fixed order, refusing symbolic links."""
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise BundleError(f"{path}: a symbolic link; a shared bundle holds plain files only.")
        if path.is_file():
            yield path


def make_zip(folder: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """Zip ``folder`` as ``<folder name>/...`` (the layout ``monai.bundle download`` unpacks), reproducibly."""
    folder, archive = Path(folder), Path(archive)
    tmp = archive.with_name(f".{archive.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in _files(folder):
                info = zipfile.ZipInfo(f"{folder.name}/{path.relative_to(folder).as_posix()}", _ZIP_TIME)
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    return archive


def unpack(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Unpack a bundle archive into ``target``; return its one top-level folder (the bundle root).

    Members with absolute paths, ``..`` or link modes are refused before anything is written.
    """
    archive, target = Path(archive), Path(target)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise BundleError(f"{archive}: not a readable zip archive ({e}).") from e
    with zf:
        members = zf.infolist()
        for member in members:
            inside(target, member.filename)
            if stat.S_ISLNK(member.external_attr >> 16):
                raise BundleError(f"{archive}: the member {member.filename} is a symbolic link.")
        tops = {PurePosixPath(m.filename).parts[0] for m in members}
        if len(tops) != 1:
            raise BundleError(f"{archive}: expected one top-level bundle folder, found {sorted(tops)}.")
        zf.extractall(target)
    return target / tops.pop()
