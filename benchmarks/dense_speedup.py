"""Measure dense (fully convolutional) inference of the patch CNN against classifying every pixel's patch.

Both run the same trained weights on the same slice: the dense pass once over the whole slice, the patch-by-patch
way by cutting the ``patch_size`` x ``patch_size`` patch centred on every pixel (zero-padded at the border, as in
dense mode) and classifying them in batches. Prints the times, the speed-up and the largest difference between
the two score maps, and returns them. Run from the repository root (``--ckpt_path``: a trained brain-tissue patch
CNN's ``model.pt``; without it, fresh weights, which cost the same)::

    python benchmarks/dense_speedup.py --ckpt_path RUN/models/model.pt --size 256
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import fire
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.networks import PatchCNN  # noqa: E402


def patch_by_patch(network: PatchCNN, image: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Scores ``(1, classes, H, W)`` of an image ``(1, C, H, W)`` by classifying the patch of every pixel."""
    p = network.patch_size // 2
    _, channels, height, width = image.shape
    padded = F.pad(image, [p, p, p, p])
    rows = []
    for y in range(height):
        strip = padded[:, :, y : y + network.patch_size]  # (1, C, patch, W + 2p)
        patches = strip.unfold(3, network.patch_size, 1)[0].permute(2, 0, 1, 3)  # (W, C, patch, patch)
        rows.append(torch.cat([network.forward_patch(b) for b in patches.split(batch_size)]))
    return torch.stack(rows).permute(2, 0, 1)[None].reshape(1, -1, height, width)


def measure(network: PatchCNN, image: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Seconds of one dense pass (best of ``repeats``) and of patch-by-patch classification, and their agreement."""
    network.eval()
    with torch.no_grad():
        dense_seconds = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            dense = network.forward_dense(image)
            dense_seconds = min(dense_seconds, time.perf_counter() - start)
        start = time.perf_counter()
        patches = patch_by_patch(network, image)
        patch_seconds = time.perf_counter() - start
    return {
        "pixels": float(image.shape[2] * image.shape[3]),
        "dense_s": dense_seconds,
        "patch_by_patch_s": patch_seconds,
        "speedup": patch_seconds / dense_seconds,
        "max_abs_score_difference": float((dense - patches).abs().max()),
        "label_agreement": float((dense.argmax(1) == patches.argmax(1)).float().mean()),
    }


def main(ckpt_path: str | None = None, size: int = 256, in_channels: int = 3, threads: int | None = None) -> None:
    """Time dense against patch-by-patch inference on one ``size`` x ``size`` slice (random if no image given)."""
    if threads:
        torch.set_num_threads(threads)
    network = PatchCNN(in_channels, 4, dropout=0.25)
    if ckpt_path:
        network.load_state_dict(torch.load(Path(ckpt_path), map_location="cpu", weights_only=True))
    report(network, size, in_channels)


def report(network: PatchCNN, size: int = 256, in_channels: int = 3) -> dict[str, float]:
    """Measure on a random ``size`` x ``size`` slice (the cost does not depend on the content) and print a line."""
    image = torch.randn(1, in_channels, size, size, generator=torch.Generator().manual_seed(0))
    result = measure(network, image)
    print(
        f"{size}x{size} slice, {int(result['pixels'])} pixels: dense {result['dense_s']:.3f} s, patch by patch "
        f"{result['patch_by_patch_s']:.1f} s, speed-up x{result['speedup']:.0f}; max |score difference| "
        f"{result['max_abs_score_difference']:.2e}, same label at {100 * result['label_agreement']:.2f}% of pixels"
    )
    return result


if __name__ == "__main__":
    fire.Fire(main)
