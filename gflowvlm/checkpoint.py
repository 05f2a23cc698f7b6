"""Checkpoint directories that are either complete or absent.

A checkpoint is written into a hidden temporary directory, then a manifest (every file's size and SHA-256) is written
last and the directory is renamed into place: a crash mid-write leaves only a `.tmp-` directory that is ignored and
cleaned up, never a half checkpoint under a real name. Loading verifies the manifest, so a truncated or edited file
is reported as a corrupt checkpoint instead of silently resuming from garbage.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gflowvlm.cli import UserError

PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


class CheckpointError(UserError):
    """A checkpoint directory that is missing, partial or corrupt."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def temporary_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f".tmp-{checkpoint_name(step)}"


def finalize(temporary: Path, final: Path) -> Path:
    """Write the manifest, then atomically move the directory to its final name."""
    files = {}
    for path in sorted(p for p in temporary.rglob("*") if p.is_file()):
        files[str(path.relative_to(temporary))] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = temporary / MANIFEST
    with open(manifest, "w", encoding="utf-8") as handle:
        json.dump({"files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    if final.exists():  # re-saving the same step (e.g. the final save after a periodic one)
        shutil.rmtree(final)
    os.replace(temporary, final)
    return final


def verify(directory: str | Path) -> Path:
    """Raise CheckpointError unless `directory` is a complete checkpoint whose files match its manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint not found: {directory}")
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete (no {MANIFEST}); it was not fully written")
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {directory} has an unreadable {MANIFEST}") from None
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} is missing")
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} does not match its manifest")
    return directory


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every directory named like a checkpoint, oldest first (complete or not)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def latest(output_dir: str | Path) -> Path | None:
    """The newest COMPLETE checkpoint (a newer one without a manifest is skipped), or None."""
    for _, path in reversed(list_checkpoints(output_dir)):
        if (path / MANIFEST).is_file():
            return path
    return None


def prune(output_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints and any leftover temporary directories."""
    output_dir = Path(output_dir)
    for _, path in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    for path in output_dir.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Every random generator a training step may draw from, on this process."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
