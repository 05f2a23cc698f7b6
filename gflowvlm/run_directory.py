"""One run per output directory: checked before the model is loaded, so a mistake costs nothing.

- An `output_dir` that is a file is an error.
- A fresh run (no `resume`) into a directory that already holds a run is refused: the new records would be
  appended to the old metrics.jsonl, the new checkpoints pruned against the old ones, and a later `resume=true`
  would continue whichever run has the newest checkpoint. `resume=true` continues the run; `overwrite=true`
  deletes it first; a new `output_dir` keeps both.
- `resume=true` continues a run only under the config it was trained with (its config.yaml): a changed seed,
  algorithm, model, LoRA rank, learning rate... would silently break exact resumption (or fail deep inside torch),
  so it is refused naming the key. The keys in SAFE_TO_CHANGE may change (more steps, logging, where to write).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from gflowvlm import checkpoint
from gflowvlm.config import RunConfig, config_to_dict
from gflowvlm.config_schema import ConfigError, load_yaml
from gflowvlm.errors import UserError

CONFIG_FILE = "config.yaml"
# Keys a resumed run may change: they do not enter the arithmetic of a step. `steps` / `max_env_steps` extend or
# shorten the run; trust_remote_code is decided by each call, never by a file (README: "Trust model");
# gradient checkpointing recomputes the same values.
SAFE_TO_CHANGE = ("steps", "max_env_steps", "resume", "overwrite", "output_dir", "logging.",
                  "model.trust_remote_code", "model.gradient_checkpointing")


class RunDirectoryError(UserError):
    """An output directory that this run must not write into as asked."""


def holds_run(directory: str | Path) -> bool:
    """Whether `directory` has anything a training run writes (config, metrics, checkpoints, final/)."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    if any((directory / name).exists() for name in (CONFIG_FILE, "metrics.jsonl", "final")):
        return True
    return bool(checkpoint.list_checkpoints(directory)) or any(directory.glob(f".tmp-{checkpoint.PREFIX}*"))


def prepare(config: RunConfig, resume_from: str | Path | None = None, is_main_process: bool = True) -> None:
    """Check (and, with overwrite=true, clear) `config.output_dir` for this run; see the module docstring.

    `resume_from`: an explicit checkpoint directory (`gflowvlm train --resume DIR`); its run's config is the one
    compared. Only the main process deletes anything.
    """
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise RunDirectoryError(f"output_dir {output_dir} is a file, not a directory: give a directory")
    resuming = config.resume or resume_from is not None
    if resuming and config.overwrite:
        raise RunDirectoryError("resume=true and overwrite=true contradict each other: resume continues the run in "
                                "output_dir, overwrite deletes it; choose one")
    if resuming:
        run_dir = Path(resume_from).parent if resume_from is not None else output_dir
        check_resumable(config, run_dir)
        return
    if not holds_run(output_dir):
        return
    if not config.overwrite:
        raise RunDirectoryError(f"output_dir {output_dir} already holds a run: continue it with resume=true, or "
                                "choose a new output_dir (overwrite=true deletes the old run first)")
    _check_deletable(output_dir)
    if is_main_process:
        shutil.rmtree(output_dir)


def check_resumable(config: RunConfig, run_dir: str | Path) -> None:
    """Refuse (one line naming the key) a resumed run whose config differs from the saved one where it matters."""
    saved_path = Path(run_dir) / CONFIG_FILE
    if not saved_path.is_file() or not checkpoint.list_checkpoints(run_dir):
        return  # no config to compare, or no checkpoint to continue: the run starts from step 0 (under this config)
    try:
        saved = load_yaml(str(saved_path))
    except ConfigError as error:
        raise RunDirectoryError(f"cannot resume: {error}") from None
    now = _flat(config_to_dict(config))
    before = _flat(saved)
    for key, value in now.items():
        if _safe_to_change(key) or key not in before:  # a key newer than the saved config cannot be compared
            continue
        if not _same(value, before[key]):
            raise RunDirectoryError(
                f"cannot resume: {key} is {_show(value)} here but {_show(before[key])} in the run being resumed "
                f"({saved_path}); exact resumption needs the same value: keep it, or start a new output_dir")


def _flat(tree: dict[str, Any]) -> dict[str, Any]:
    """section.key -> value, one level deep: a config's sections are flat, and mapping-valued keys (env.kwargs)
    compare as a whole."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            for sub, item in value.items():
                out[f"{key}.{sub}"] = item
        else:
            out[str(key)] = value
    return out


def _safe_to_change(key: str) -> bool:
    return any(key == safe or (safe.endswith(".") and key.startswith(safe)) for safe in SAFE_TO_CHANGE)


def _same(a: Any, b: Any) -> bool:
    # YAML reads back 3 for 3.0 and lists for tuples; compare as the values they are.
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_deletable(directory: Path) -> None:
    """overwrite=true deletes `directory` whole: never the filesystem root, the home directory, or the current
    directory or one above it (output_dir=. would otherwise take the project with it)."""
    resolved = directory.resolve()
    cwd = Path.cwd().resolve()
    home = Path(os.path.expanduser("~")).resolve()
    if resolved == Path(resolved.anchor) or resolved == home or resolved == cwd or resolved in cwd.parents:
        raise RunDirectoryError(f"overwrite=true will not delete {directory}: it is the root, home or current "
                                "directory (or above it); give a dedicated output_dir")
