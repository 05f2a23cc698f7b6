"""Where an ALFWorld env finds its games.

`data_dir` is a folder with one subfolder per split. The env's `split` maps to:

| env split | generated games (`gflowvlm alfworld generate`) | official dataset (`$ALFWORLD_DATA/json_2.1.1`) |
|---|---|---|
| `train` | `train/` | `train/` |
| `id`    | `id/` (seen floor plans and pairings, new instances) | `valid_seen/` |
| `ood`   | `ood/` (unseen floor plans and pairings) | `valid_unseen/` |

`data_dir` may be the dataset root itself or the folder holding `json_2.1.1`. With no `data_dir`, the env uses the
official dataset if `alfworld-download` fetched it (into `$ALFWORLD_DATA`, by default `~/.cache/alfworld`), and
otherwise generates a small default set
(DEFAULT_GAMES mixed-size games per split, fixed seed) once into `~/.cache/gflowvlm/alfworld/` (or
`$GFLOWVLM_CACHE_DIR/alfworld/`), safely when several processes start at once.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from envs.alfworld.engine import cache_root

SPLIT_FOLDERS = {"train": ("train",), "id": ("id", "valid_seen"), "ood": ("ood", "valid_unseen")}
DEFAULT_GAMES = 60
# Bump when the generator's output changes, so stale cached games are never reused.
GENERATOR_VERSION = "gen1"
_COMPLETE = ".complete"


@dataclass(frozen=True)
class GameEntry:
    game_file: str
    traj_file: str
    task_type: str


def split_dir(data_dir: str, split: str) -> str:
    """The folder of `split` under a generated or official data folder; ValueError naming what is missing."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLIT_FOLDERS)}")
    root = os.path.abspath(os.path.expanduser(os.path.expandvars(data_dir)))
    if not os.path.isdir(root):
        raise ValueError(f"ALFWorld data_dir {root} does not exist")
    for base in (root, os.path.join(root, "json_2.1.1")):
        for name in SPLIT_FOLDERS[split]:
            if os.path.isdir(os.path.join(base, name)):
                return os.path.join(base, name)
    names = " or ".join(f"'{n}'" for n in SPLIT_FOLDERS[split])
    raise ValueError(f"no {split} games in {root}: expected a subfolder {names}")


def find_games(folder: str, task_types: tuple[str, ...]) -> list[GameEntry]:
    """Playable games under `folder`, sorted by path, keeping AlfredTWEnv's rules (traj_data.json beside
    game.tw-pddl, no movable-receptacle or sliced tasks) and the requested task types."""
    games = []
    for root, _, files in os.walk(folder):
        if "traj_data.json" not in files or "game.tw-pddl" not in files:
            continue
        if "movable" in root or "Sliced" in root:
            continue
        traj_file = os.path.join(root, "traj_data.json")
        with open(traj_file) as f:
            task_type = json.load(f).get("task_type", "")
        if task_type in task_types:
            games.append(GameEntry(os.path.join(root, "game.tw-pddl"), traj_file, task_type))
    return sorted(games, key=lambda g: g.game_file)


def official_root() -> str | None:
    """Where `alfworld-download` put the dataset ($ALFWORLD_DATA, by default ~/.cache/alfworld), if it did."""
    root = os.environ.get("ALFWORLD_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "alfworld")
    if os.path.isdir(os.path.join(root, "json_2.1.1")):
        return root
    return None


def default_data_dir(split: str, seed: int = 0, games: int = DEFAULT_GAMES) -> str:
    """A generated data folder holding `split` (generated on first use; later calls reuse it)."""
    root = os.path.join(cache_root(), "alfworld", f"{GENERATOR_VERSION}-s{seed}-n{games}")
    target = os.path.join(root, split)
    if os.path.exists(os.path.join(target, _COMPLETE)):
        return root
    os.makedirs(root, exist_ok=True)
    with _lock(os.path.join(root, f".lock-{split}")):
        if not os.path.exists(os.path.join(target, _COMPLETE)):
            _generate_into(root, split, seed, games)
    return root


def _generate_into(root: str, split: str, seed: int, games: int) -> None:
    from envs.alfworld.generator import GenerationRequest, generate

    staging = os.path.join(root, f".staging-{split}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    generate(staging, GenerationRequest(split, seed), games)
    shutil.rmtree(os.path.join(root, split), ignore_errors=True)   # a partial folder from a killed run
    os.rename(os.path.join(staging, split), os.path.join(root, split))
    shutil.rmtree(staging, ignore_errors=True)
    with open(os.path.join(root, split, _COMPLETE), "w") as f:
        f.write(f"{games} games, seed {seed}\n")


class _lock:
    """An exclusive advisory file lock (POSIX); elsewhere a no-op, which only risks duplicate work."""

    def __init__(self, path: str):
        self.path = path
        self.handle = None

    def __enter__(self):
        self.handle = open(self.path, "a")
        try:
            import fcntl
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        self.handle.close()   # closing the file releases the lock
        return False
