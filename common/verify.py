"""Verify a shared bundle, offline, before using it: metadata schema, weight checksums, network input/output and
TorchScript against PyTorch.

    python -m common.verify DIR_or_ZIP [--sha256 HEX] [--static_only]

A bundle that fails gets one message naming the file and the problem, and a non-zero exit. The static checks
(metadata, checksums) run first and execute nothing from the bundle; the network checks then instantiate
``network_def`` from its configs, i.e. run its code, in a separate process started in the bundle folder, so the
bundle's own vendored ``common`` and ``scripts`` are the ones checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fire

from common.bundle_archive import (
    HASH_TYPES,
    BundleError,
    check_metadata,
    file_hash,
    inside,
    read_large_files,
    unpack,
    weight_files,
)

if TYPE_CHECKING:
    import torch

#: the vendored schema every exported bundle carries, so metadata is checked offline
SCHEMA = "common/schemas/bundle_metadata_schema.json"
#: TorchScript and eager outputs must agree within these tolerances
RTOL, ATOL = 1e-4, 1e-5
#: the network checks must finish within this many seconds
NETWORK_TIMEOUT = 900
#: the config whose ``network_def`` is exported and run by receivers
NETWORK_CONFIG = "configs/inference.json"


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
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{ckpt}: not a model state dict (a mapping of parameter names to tensors).")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def check_static(root: Path) -> list[str]:
    """Check metadata against the vendored schema and every checksum in ``large_files.yml``; return what passed."""
    meta = check_metadata(root / "configs" / "metadata.json", root / SCHEMA)
    entries = read_large_files(root)
    listed: dict[str, str] = {}
    for entry in entries:
        path, hash_type, expected = str(entry["path"]), str(entry["hash_type"]).lower(), str(entry["hash_val"])
        file = inside(root, path)
        if hash_type not in HASH_TYPES:
            raise BundleError(f"{root / 'large_files.yml'}: {path} has unsupported hash_type {hash_type!r}.")
        if not file.is_file():
            raise BundleError(f"{file}: listed in large_files.yml but missing.")
        actual = file_hash(file, hash_type)
        if actual != expected.lower():
            label = hash_type.upper().replace("SHA", "SHA-")
            raise BundleError(
                f"{file}: {label} checksum mismatch, large_files.yml lists {expected} but the file has "
                f"{actual}; the file was changed or damaged after export. Do not use this bundle."
            )
        listed[Path(path).as_posix()] = actual
    unlisted = [p for p in weight_files(root) if p not in listed]
    if unlisted:
        raise BundleError(f"{root / unlisted[0]}: a weight file not listed in large_files.yml.")
    for path, digest in (meta.get("weights_sha256") or {}).items():
        file = inside(root, path)
        if not file.is_file() or file_hash(file) != str(digest).lower():
            raise BundleError(
                f"{root / 'configs' / 'metadata.json'}: weights_sha256 lists {digest} for {path}, which does not "
                "match that file."
            )
    return ["metadata matches the schema", f"{len(listed)} checksum(s) match: {', '.join(sorted(listed))}"]


def _reason(error: Exception) -> str:
    """The informative line of an exception (``torch.load``'s own messages run over many lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "Unsupported global" in line or "WeightsUnpickler error" in line]
    line = (useful or lines or [""])[0]
    return f"{type(error).__name__}: {line[:300]}"


def check_network(root: str | Path, config: str = NETWORK_CONFIG) -> list[str]:
    """Load the weights safely, run ``verify_net_in_out`` and compare TorchScript with PyTorch on a random input."""
    import torch  # torch and monai only here: the static checks stay quick and import nothing heavy
    from monai.bundle import verify_net_in_out

    root = Path(root).resolve()
    meta = check_metadata(root / "configs" / "metadata.json", root / SCHEMA)
    weights = root / "models" / "model.pt"
    try:
        state = load_weights(weights)
    except Exception as e:
        raise BundleError(f"{weights}: refused by torch.load(weights_only=True) ({_reason(e)}).") from e
    try:
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(root / "configs" / "metadata.json"),
            config_file=str(root / config),
            bundle_root=str(root),
            device="cpu",
            n=2,  # twice the smallest size: instance norm needs more than one voxel at a 16x-strided bottleneck
        )
    except Exception as e:
        raise BundleError(f"{root / config}: network_def fails verify_net_in_out ({type(e).__name__}: {e}).") from e
    net = build_network(root, config)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise BundleError(f"{weights}: does not fit network_def of {root / config} ({e}).") from e
    scripted = root / "models" / "model.ts"
    try:
        ts = torch.jit.load(str(scripted), map_location="cpu")
    except Exception as e:
        raise BundleError(f"{scripted}: not a loadable TorchScript model ({type(e).__name__}: {e}).") from e
    shape = example_input_shape(meta)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    net.eval()
    ts.eval()
    with torch.no_grad():
        expected, actual = net(x), ts(x)
    try:
        torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)
    except AssertionError as e:
        summary = " ".join(str(e).split())[:300]
        raise BundleError(f"{scripted}: TorchScript output differs from network_def with model.pt ({summary}).") from e
    return [
        "model.pt loads with weights_only=True",
        "verify_net_in_out passed",
        f"TorchScript equals PyTorch on a random input of shape {tuple(shape)} (rtol {RTOL}, atol {ATOL})",
    ]


def _network_main(root: str) -> None:
    """Entry point of the network-check process: print what passed, or the error and exit 1."""
    try:
        for line in check_network(root):
            print(f"ok: {line}")
    except BundleError as e:
        print(f"REFUSED: {e}", file=sys.stderr)
        sys.exit(1)


def _run_network_checks(root: Path) -> list[str]:
    """Run ``check_network`` in a new process whose working folder is the bundle root (its own ``common``)."""
    code = "import sys; from common.verify import _network_main; _network_main(sys.argv[1])"
    no_site = ["-S"] if sys.flags.no_site else []  # the same isolation as the caller's
    result = subprocess.run(
        [sys.executable, *no_site, "-c", code, str(root)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=NETWORK_TIMEOUT,
    )
    if result.returncode != 0:
        refused = [line for line in result.stderr.splitlines() if line.startswith("REFUSED: ")]
        message = refused[-1][len("REFUSED: ") :] if refused else result.stderr.strip()[-2000:]
        raise BundleError(message)
    return [line[len("ok: ") :] for line in result.stdout.splitlines() if line.startswith("ok: ")]


def verify_bundle(path: str | Path, sha256: str | None = None, static_only: bool = False) -> list[str]:
    """Verify a bundle folder or zip archive; return what passed, raising ``BundleError`` on the first failure."""
    path = Path(path).resolve()
    if not path.exists():
        raise BundleError(f"{path}: no such bundle folder or archive.")
    passed: list[str] = []
    if sha256 is not None:
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise BundleError(
                f"--sha256 {sha256}: not a SHA-256 (64 hexadecimal digits; quote it on the command line)."
            )
        if path.is_dir():
            raise BundleError(f"{path}: --sha256 checks an archive; this is a folder.")
        actual = file_hash(path)
        if actual != sha256.lower():
            raise BundleError(f"{path}: SHA-256 {actual} differs from the published {sha256}; do not use it.")
        passed.append("archive SHA-256 matches the published one")
    if path.is_dir():
        return passed + _verify_folder(path, static_only)
    with tempfile.TemporaryDirectory(prefix="verify_bundle_") as tmp:
        return passed + _verify_folder(unpack(path, tmp), static_only)


def _verify_folder(root: Path, static_only: bool) -> list[str]:
    """Static checks, then (unless ``static_only``) the network checks, of an unpacked bundle."""
    passed = check_static(root)
    return passed if static_only else passed + _run_network_checks(root)


def verify(path: str, sha256: str | None = None, static_only: bool = False) -> None:
    """Verify a bundle folder or ``.zip`` offline; print what passed, or one error and exit with status 1.

    Args:
        path: exported bundle folder, or its zip archive.
        sha256: the archive's SHA-256 as the sender published it (``<archive>.sha256``), checked first.
        static_only: only metadata and checksums; run nothing from the bundle.
    """
    try:
        passed: list[Any] = verify_bundle(path, sha256, static_only)
    except BundleError as e:
        print(f"verify: REFUSED: {e}", file=sys.stderr)
        sys.exit(1)
    for line in passed:
        print(f"ok: {line}")
    print(f"verified: {path}")


if __name__ == "__main__":
    fire.Fire(verify)
