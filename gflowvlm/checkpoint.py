"""Checkpoint directories that are either complete or absent, and verified before anything in them is used.

A checkpoint (and a saved policy such as a run's `final/`) is written into a hidden temporary directory, then a
manifest (every file's size and SHA-256) is written last and the directory is renamed into place: a crash mid-write
leaves only a `.tmp-` directory that is ignored and cleaned up, never a half checkpoint under a real name.

Loading verifies the manifest: it must list exactly the files that are there (an entry removed or a file added is
as wrong as a changed byte), with sizes and hashes that match, and no file may be a pickle or a Python module (a
checkpoint is safetensors + JSON; see the README's "Trust model"). The manifest is not a signature: it catches
crashes, truncation and careless edits, and the loaders still parse everything as untrusted data.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gflowvlm.errors import UserError

PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# `gflowvlm eval` writes its JSON (through a hidden temporary) and transcript next to what it evaluates; no loader
# reads them, so they may sit in a verified directory without being in its manifest.
_EVAL_OUTPUT = re.compile(r"^(\.?eval_[^/]*\.json(\.tmp)?|eval_[^/]*_transcript/.+)$")
# Unpickling runs code (pytorch_model.bin, *.pt, ...), and transformers imports *.py files under remote code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
CODE_SUFFIXES = (".py", ".pyc", ".so")


class CheckpointError(UserError):
    """A checkpoint directory that is missing, partial or corrupt."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def temporary_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f".tmp-{checkpoint_name(step)}"


def temporary_sibling(final: str | Path) -> Path:
    """The hidden directory `final` is written in before it is renamed into place."""
    final = Path(final)
    return final.parent / f".tmp-{final.name}"


def write_manifest(directory: Path) -> Path:
    """List every file under `directory` with its size and SHA-256 in its manifest (written last, synced)."""
    files = {}
    for name in _files(directory):
        path = directory / name
        files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = directory / MANIFEST
    with open(manifest, "w", encoding="utf-8") as handle:
        json.dump({"files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    return manifest


def finalize(temporary: Path, final: Path) -> Path:
    """Write the manifest, then move the directory to its final name (replacing an older one whole)."""
    write_manifest(temporary)
    # Re-saving under an existing name (the final save after a periodic one, a resumed run's final/): the old
    # directory is renamed aside first, so at every moment the name holds either the old or the new one, whole.
    aside = final.parent / f".old-{final.name}"
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(temporary, final)
    shutil.rmtree(aside, ignore_errors=True)
    return final


def verify(directory: str | Path, required: Iterable[str] = (), allow_code: bool = False) -> Path:
    """Raise CheckpointError unless `directory` is complete: its manifest lists exactly the files present (and
    every name in `required`), each with its size and hash, and none is a pickle or (unless `allow_code`: remote
    code asked for on this very call) a Python module."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint not found: {directory}")
    if not (directory / MANIFEST).is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete (no {MANIFEST}); it was not fully written")
    listed = _read_manifest(directory)
    for name in required:
        if name not in listed:
            raise CheckpointError(f"checkpoint {directory} is incomplete: its {MANIFEST} does not list {name}")
    present = _files(directory)
    for name in present:
        if name not in listed and not _EVAL_OUTPUT.match(name):
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} is not in its {MANIFEST}")
    for name, expected in listed.items():
        if name.lower().endswith(PICKLE_SUFFIXES) or (not allow_code and name.lower().endswith(CODE_SUFFIXES)):
            kind = "a pickle" if name.lower().endswith(PICKLE_SUFFIXES) else "Python code"
            raise CheckpointError(f"checkpoint {directory} holds {name}, {kind}: a checkpoint is safetensors + JSON "
                                  "(code runs only with --trust-remote-code given on this command line)")
        path = directory / name
        if not path.is_file() or name not in present:
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} is missing")
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} does not match its manifest")
    return directory


def verify_saved_policy(directory: str | Path, allow_code: bool = False) -> Path:
    """Verify a directory written by `VLMPolicy.save_pretrained` (a run's final/, a checkpoint's policy/).

    By its own manifest; the policy/ of a checkpoint written before policies carried one is covered by the
    checkpoint's manifest instead.
    """
    directory = Path(directory)
    parent = directory.parent
    if (not (directory / MANIFEST).is_file() and directory.name == "policy" and _NAME.match(parent.name)
            and (parent / MANIFEST).is_file()):
        verify(parent, allow_code=allow_code)
        return directory
    if directory.is_dir() and not (directory / MANIFEST).is_file():
        raise CheckpointError(f"saved policy {directory} is incomplete (no {MANIFEST}): it was not fully written, or "
                              "by a gflowvlm that did not yet list final/ in a manifest (evaluate a checkpoint-* "
                              "directory of the run instead)")
    return verify(directory, allow_code=allow_code)


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every directory named like a checkpoint, oldest first (complete or not)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def newest(output_dir: str | Path) -> tuple[Path | None, list[Path]]:
    """(the newest checkpoint with a manifest or None, the newer ones skipped for having none, newest first)."""
    skipped = []
    for _, path in reversed(list_checkpoints(output_dir)):
        if (path / MANIFEST).is_file():
            return path, skipped
        skipped.append(path)
    return None, skipped


def latest(output_dir: str | Path) -> Path | None:
    """The newest COMPLETE checkpoint (a newer one without a manifest is skipped), or None."""
    return newest(output_dir)[0]


def prune(output_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints and any leftover temporary directories."""
    output_dir = Path(output_dir)
    for _, path in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    for pattern in (f".tmp-{PREFIX}*", f".old-{PREFIX}*"):
        for path in output_dir.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative name: {"bytes", "sha256"}}, every entry checked for shape (the file is untrusted input)."""
    unreadable = CheckpointError(f"checkpoint {directory} has an unreadable {MANIFEST}")
    try:
        files = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise unreadable from None
    if not isinstance(files, dict):
        raise unreadable
    for name, entry in files.items():
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in parts):
            raise CheckpointError(f"checkpoint {directory} has an unreadable {MANIFEST}: bad file name {name!r}")
        if (not isinstance(entry, dict) or type(entry.get("bytes")) is not int or entry["bytes"] < 0
                or not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"])):
            raise CheckpointError(f"checkpoint {directory} has an unreadable {MANIFEST}: bad entry for {name}")
    return files


def _files(directory: Path) -> list[str]:
    """Relative names of every file under `directory` but the manifest; a symbolic link is refused (it could
    point anywhere, and what it points at is not what the manifest hashed)."""
    names = []
    for root, dirs, files in os.walk(directory):
        for entry in dirs + files:
            if os.path.islink(os.path.join(root, entry)):
                raise CheckpointError(f"checkpoint {directory} holds a symbolic link, "
                                      f"{Path(root, entry).relative_to(directory)}: a checkpoint holds plain files")
        for entry in files:
            name = Path(root, entry).relative_to(directory).as_posix()
            if name != MANIFEST:
                names.append(name)
    return sorted(names)


# ----- what resume reads, checked before it is applied ---------------------------------------------------------
_STATE_FIELDS = {"step": int, "env_steps": int, "nonfinite_streak": int, "num_processes": int, "algorithm": str}


def read_trainer_state(path: Path, algorithm: str) -> dict:
    """trainer_state.json of checkpoint `path`, checked field by field (the file is untrusted input)."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} is corrupt: trainer_state.json is not JSON") from None
    counts = ("step", "env_steps", "nonfinite_streak")
    if (not isinstance(state, dict) or any(type(state.get(key)) is not kind for key, kind in _STATE_FIELDS.items())
            or min(state[key] for key in counts) < 0 or state["num_processes"] < 1):
        raise CheckpointError(f"checkpoint {path} is corrupt: trainer_state.json must hold "
                              f"{', '.join(_STATE_FIELDS)} (non-negative counts)")
    if _NAME.match(path.name) and path.name != checkpoint_name(state["step"]):
        raise CheckpointError(f"checkpoint {path} is corrupt: its trainer_state.json says step {state['step']}")
    if state["algorithm"] != algorithm:
        raise CheckpointError(f"checkpoint {path} was written by a {state['algorithm']!r} run, this run is "
                              f"{algorithm!r}: a checkpoint resumes the algorithm that wrote it")
    return state


def read_tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of safetensors file `name` of checkpoint `path` (unreadable: CheckpointError)."""
    try:
        return load_file(str(path / name))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt: {name} is unreadable ({_first_line(error)})") from None


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, Any], path: Path, file: str) -> None:
    """Exactly the expected keys, with the expected shapes, and finite values."""
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"checkpoint {path} does not match this model: {missing[0]} is missing from {file}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"checkpoint {path} does not match this model: {file} holds {extra[0]}, which this "
                              "model does not train")
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(expected[name]):
            raise CheckpointError(f"checkpoint {path} does not match this model: {name} has shape "
                                  f"{list(value.shape)} in {file}, {list(expected[name])} here")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} in {file} has non-finite values")


def check_optimizer_state(state: Any, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The saved optimizer moments have the shapes of the parameters they belong to and are finite (torch's own
    load_state_dict checks only the group sizes: a wrong shape would fail at the next step, a NaN train on)."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        raise CheckpointError(f"checkpoint {path} is corrupt: the optimizer state is malformed")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in state["state"].items():
        if type(index) is not int or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise CheckpointError(f"checkpoint {path} is corrupt: the optimizer state does not fit this model's "
                                  "parameters")
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                continue
            if value.dim() > 0 and tuple(value.shape) != tuple(params[index].shape):
                raise CheckpointError(f"checkpoint {path} does not match this model: optimizer {key} of parameter "
                                      f"{index} has shape {list(value.shape)}, the parameter "
                                      f"{list(params[index].shape)}")
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"checkpoint {path} is corrupt: optimizer {key} of parameter {index} has "
                                      "non-finite values")


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


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
