"""Sharing a bundle: export with weights, TorchScript and checksums; verify (and refuse tampered bundles); run the
exported bundle where this repository cannot be imported; download it from a local HTTP index."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from common.bundle_archive import BundleError, make_zip, read_large_files, unpack, write_large_files
from common.export import common_closure
from common.verify import check_network, check_static
from conftest import ROOT, check
from synthetic.retinal import write_image

# MONAI notes the retinal metadata's older key name whenever it reads it: expected here, not a problem
pytestmark = pytest.mark.filterwarnings("ignore:Detected deprecated name 'optional_packages_version'")

BUNDLE = ROOT / "bundles" / "retinal_vessel_unet"
NAME = BUNDLE.name
VERSION = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
ARCHIVE = f"{NAME}_v{VERSION}.zip"
TRAINED_ON = "8 synthetic fundus photographs of about 128 px (python -m synthetic.demo retinal_vessel_unet --quick)"
#: files every export must hold (among others)
EXPECTED_FILES = (
    "configs/inference.json",
    "configs/train.json",
    "configs/metadata.json",
    "docs/README.md",
    "docs/sharing.md",
    "LICENSE",
    "scripts/fov.py",
    "models/model.pt",
    "models/model.ts",
    "large_files.yml",
    "common/__init__.py",
    "common/transforms.py",
    "common/verify.py",
    "common/schemas/bundle_metadata_schema.json",
)


def run(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` as a user types it, capturing the output."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def verify(path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m common.verify PATH ARGS`` from the repository root."""
    return run("-m", "common.verify", str(path), *args)


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one message of a refused verification (a non-zero exit is asserted)."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("verify: REFUSED: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def exported(quick_run, tmp_path_factory) -> dict:
    """The retinal bundle's quick demo run (trained and evaluated) exported with its metrics; return the paths."""
    demo = quick_run(NAME)
    work = tmp_path_factory.mktemp("export")
    trained = {"ckpt": demo.ckpt}
    metrics = demo.out / "eval" / "metrics_summary.json"
    out = work / "out"
    log = check(
        run(
            "-m", "common.export", str(BUNDLE.relative_to(ROOT)), "--out", str(out), "--ckpt", str(trained["ckpt"]),
            "--metrics", str(metrics), "--trained_on", TRAINED_ON,
        )
    )  # fmt: skip
    return {
        "out": out,
        "root": out / NAME,
        "zip": out / ARCHIVE,
        "ckpt": trained["ckpt"],
        "metrics": metrics,
        "log": log,
    }


def test_export_writes_a_self_contained_bundle(exported):
    root, out = exported["root"], exported["out"]
    assert "ONNX: skipped" in exported["log"]  # onnx is not installed here: a note, not a failure
    for path in EXPECTED_FILES:
        assert (root / path).is_file(), path
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")], "caches were exported"
    # only the modules the configs and scripts import (and the verifier), not the tools of this repository
    assert {f for f in files if f.startswith("common/")} == set(common_closure(BUNDLE))
    assert "common/export.py" not in files and "common/profile.py" not in files and "tooling.json" not in files
    assert (root / "configs" / "inference.json").read_bytes() == (BUNDLE / "configs" / "inference.json").read_bytes()
    # what the review flags compare new cases with travels with the weights
    statistics = exported["ckpt"].parent / "training_statistics.json"
    assert (root / "models" / "training_statistics.json").read_bytes() == statistics.read_bytes()

    source_meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["version"] == source_meta["version"] and meta["changelog"] == source_meta["changelog"]
    summary = json.loads(exported["metrics"].read_text())
    assert meta["eval_metrics"]["mean_dice"] == pytest.approx(summary["dice"]["mean"])
    assert meta["trained_on"] == TRAINED_ON

    card = (root / "docs" / "README.md").read_text()
    assert card.startswith((BUNDLE / "docs" / "README.md").read_text().rstrip())
    section = card[card.index(f"## Shipped weights (version {VERSION})") :]
    assert TRAINED_ON in section and f"Measured on {summary['cases']} evaluation cases" in section
    assert f"| dice | {summary['dice']['mean']:.4f} | {summary['dice']['std']:.4f} |" in section

    with zipfile.ZipFile(exported["zip"]) as zf:
        members = {n for n in zf.namelist() if not n.endswith("/")}
    assert members == {f"{NAME}/{f}" for f in files}
    digest = hashlib.sha256(exported["zip"].read_bytes()).hexdigest()
    assert (out / f"{ARCHIVE}.sha256").read_text() == f"{digest}  {ARCHIVE}\n"


def test_checksums_equal_hashlib_and_weights_are_the_trained_ones(exported):
    root = exported["root"]
    entries = yaml.safe_load((root / "large_files.yml").read_text())["large_files"]
    assert [e["path"] for e in entries] == ["models/model.pt", "models/model.ts"]
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    for entry in entries:
        expected = hashlib.sha256((root / entry["path"]).read_bytes()).hexdigest()
        assert entry["hash_type"] == "sha256" and entry["hash_val"] == expected
        assert meta["weights_sha256"][entry["path"]] == expected
    shipped = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    trained = torch.load(exported["ckpt"], map_location="cpu", weights_only=True)
    trained = trained.get("model", trained)
    assert shipped.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(shipped[key], value), key


def test_torchscript_equals_eager(exported):
    root = exported["root"]
    parser = ConfigParser()
    parser.read_config(root / "configs" / "inference.json")
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    x = torch.rand(2, 3, 96, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
        actual = torch.jit.load(str(root / "models" / "model.ts"), map_location="cpu")(x)
    assert expected.abs().max() > 0
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_verify_accepts_the_archive_and_checks_the_published_hash(exported):
    digest = (exported["out"] / f"{ARCHIVE}.sha256").read_text().split()[0]
    out = check(verify(exported["zip"], "--sha256", digest))
    for expected in ("archive SHA-256 matches", "metadata matches the schema", "2 checksum(s) match",
                     "model.pt loads with weights_only=True", "verify_net_in_out passed",
                     "TorchScript equals PyTorch on a random input of shape (1, 3, 64, 64)"):  # fmt: skip
        assert expected in out, out
    message = refusal(verify(exported["zip"], "--sha256", "f" * 64))
    assert ARCHIVE in message and "differs from the published" in message


def _copy(exported: dict, tmp_path: Path) -> Path:
    """A copy of the exported bundle folder to damage."""
    return Path(shutil.copytree(exported["root"], tmp_path / NAME))


def _flip_one_byte(path: Path) -> None:
    """Change one byte in the middle of a file."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("weight, as_zip", [("models/model.pt", False), ("models/model.ts", True)])
def test_tampered_weight_file_is_refused_naming_it(exported, tmp_path, weight, as_zip):
    root = _copy(exported, tmp_path)
    _flip_one_byte(root / weight)
    target = make_zip(root, tmp_path / ARCHIVE) if as_zip else root
    message = refusal(verify(target))
    assert f"{weight}: SHA-256 checksum mismatch" in message, message


def test_metadata_failing_the_schema_is_refused(exported, tmp_path):
    root = _copy(exported, tmp_path)
    meta_file = root / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["network_data_format"]["inputs"]["image"]["num_channels"] = "three"
    meta_file.write_text(json.dumps(meta))
    message = refusal(verify(root))
    assert "configs/metadata.json: fails the metadata schema" in message
    assert "network_data_format/inputs/image/num_channels" in message and "'three'" in message


def _relist(root: Path) -> None:
    """Rewrite the checksums after a change, as a careless or malicious sender would."""
    write_large_files(root, ["models/model.pt", "models/model.ts"])
    meta_file = root / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta.pop("weights_sha256")
    meta_file.write_text(json.dumps(meta))


def test_torchscript_that_differs_from_the_weights_is_refused(exported, tmp_path):
    root = _copy(exported, tmp_path)
    parser = ConfigParser()
    parser.read_config(root / "configs" / "inference.json")
    other = parser.get_parsed_content("network_def").eval()  # freshly initialised, not the shipped weights
    torch.jit.save(torch.jit.script(other), str(root / "models" / "model.ts"))
    _relist(root)
    check_static(root)  # the checksums were rewritten to match: only the comparison with the weights can tell
    with pytest.raises(BundleError, match="models/model.ts: TorchScript output differs from network_def"):
        check_network(root)


class Payload:
    """An arbitrary object: pickled into a checkpoint, loading it would run code."""


def test_weights_that_need_full_unpickling_are_refused(exported, tmp_path):
    root = _copy(exported, tmp_path)
    torch.save({"model": Payload()}, root / "models" / "model.pt")
    _relist(root)
    check_static(root)
    with pytest.raises(
        BundleError, match=r"models/model.pt: refused by torch.load\(weights_only=True\).*Unsupported global.*Payload"
    ):
        check_network(root)


def _with_requirements(names: set[str]) -> set[str]:
    """The installed distributions ``names`` and every installed distribution they require, transitively (a
    requirement that only an extra asks for is left out, as ``pip install name`` leaves it out)."""
    todo, found = sorted(names), set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement of another platform or Python version
        found.add(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def _site_with_only(names: set[str], folder: Path) -> Path:
    """A folder of links to the installed files of ``names`` and of what they require: on ``PYTHONPATH`` with
    ``python -S``, what a lab has after ``pip install`` of exactly those packages."""
    folder.mkdir()
    for name in sorted(_with_requirements(names)):
        dist = metadata.distribution(name)
        for top in sorted({Path(str(f)).parts[0] for f in dist.files or []} - {"..", "__pycache__"}):
            source, link = Path(str(dist.locate_file(top))), folder / top
            if source.exists() and not link.exists():
                link.symlink_to(source)
    return folder


def _isolated_env(home: Path, site: Path) -> dict[str, str]:
    """An environment for ``python -S`` (no site processing, so the editable install of this repository is not
    active) that imports only what ``site`` holds."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(site), "HOME": str(home)}


def _install_line(card: str) -> set[str]:
    """The distributions the ``pip install`` line of an exported model card names."""
    line = next(line for line in card.splitlines() if line.startswith("pip install "))
    return {canonicalize_name(pin.strip('"').split("==")[0]) for pin in line.split()[2:]}


def test_isolated_environment_runs_the_exported_archive(exported, tmp_path):
    received, cwd, inputs = tmp_path / "received", tmp_path / "cwd", tmp_path / "in"
    for folder in (received, cwd, inputs):
        folder.mkdir()
    with zipfile.ZipFile(exported["zip"]) as zf:
        zf.extractall(received)
    root = received / NAME
    listed = _install_line((root / "docs" / "README.md").read_text())
    assert {"monai", "torch", "numpy", "pillow", "pytorch-ignite", "scipy", "pyyaml", "jsonschema"} <= listed
    env = _isolated_env(tmp_path, _site_with_only(listed, tmp_path / "site"))
    no_repo = run("-S", "-c", "import common", cwd=cwd, env=env)
    assert no_repo.returncode != 0 and "No module named 'common'" in no_repo.stderr
    where = "import sys; sys.path.insert(0, sys.argv[1]); import common; print(common.__file__)"
    vendored = check(run("-S", "-c", where, str(root), cwd=cwd, env=env))
    assert Path(vendored.strip()).parent == root / "common"

    # the receiving lab verifies with the verifier shipped inside the bundle, in the same environment
    verified = check(run("-S", "-m", "common.verify", ".", cwd=root, env=env))
    assert "TorchScript equals PyTorch" in verified and "verified: ." in verified

    sizes = {"wide": (90, 150), "tall": (130, 70)}  # (height, width)
    for stem, (height, width) in sizes.items():
        write_image(str(inputs / f"{stem}.png"), height, width, seed=5)
    check(
        run(
            "-S", "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "inference.json"),
            "--bundle_root", str(root), "--input_dir", str(inputs), "--output_dir", str(tmp_path / "out"),
            cwd=cwd, env=env,
        )
    )  # fmt: skip
    for stem, (height, width) in sizes.items():
        seg = np.asarray(Image.open(tmp_path / "out" / f"{stem}_seg.png"))
        assert seg.shape == (height, width) and set(np.unique(seg)) <= {0, 255}
    assert json.loads((tmp_path / "out" / "failed_cases.json").read_text()) == []
    assert (tmp_path / "out" / "report.html").is_file()  # the review page's modules were vendored too


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging every request to stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_download_from_a_local_http_index_then_verify(exported, tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(exported["out"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE}"
        env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        cmd = ["-m", "monai.bundle", "download", "--name", NAME, "--bundle_dir", str(tmp_path), "--url", url]
        check(run(*cmd, cwd=tmp_path, env=env, timeout=120))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    published = (exported["out"] / f"{ARCHIVE}.sha256").read_text().split()[0]
    assert hashlib.sha256((tmp_path / f"{NAME}.zip").read_bytes()).hexdigest() == published
    out = check(verify(tmp_path / NAME))
    assert "TorchScript equals PyTorch" in out and f"verified: {tmp_path / NAME}" in out


def test_large_files_name_download_urls_for_a_hosted_folder(tmp_path):
    root = tmp_path / NAME
    (root / "models").mkdir(parents=True)
    (root / "models" / "model.pt").write_bytes(b"weights")
    write_large_files(root, ["models/model.pt"], base_url="http://lab.example/bundles/")
    (entry,) = read_large_files(root)
    assert entry == {
        "path": "models/model.pt",
        "url": f"http://lab.example/bundles/{NAME}/models/model.pt",
        "hash_val": hashlib.sha256(b"weights").hexdigest(),
        "hash_type": "sha256",
    }


@pytest.mark.parametrize("member", ["../escape.txt", "/etc/escape.txt", "two/tops.txt"])
def test_archive_with_unsafe_or_foreign_members_is_refused(tmp_path, member):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{NAME}/configs/metadata.json", "{}")
        zf.writestr(member, "x")
    with pytest.raises(BundleError, match="outside the bundle folder|one top-level bundle folder"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.txt").exists()
