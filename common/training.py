"""Training helpers for the bundle configs: finding the checkpoint to resume from."""

from __future__ import annotations

from pathlib import Path


def latest_checkpoint(ckpt_dir: str) -> str:
    """Path of the newest resumable checkpoint (``checkpoint_*.pt``, with optimizer and trainer state) in ckpt_dir."""
    candidates = sorted(Path(ckpt_dir).glob("checkpoint_*.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint_*.pt to resume from; train once without resume first.")
    return str(candidates[-1])
