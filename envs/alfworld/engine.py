"""The door to the real ALFWorld engine (textworld's PDDL engine with fast-downward, from the `alfworld` extra).

`alfworld` is an optional dependency: `import envs` must work without it, so every module of this package
imports the engine through `require_alfworld()` at the moment it is needed, and a missing extra becomes one
line that names the install command.

`EngineGame` wraps one textworld `PddlEnv` (with ALFWorld's own name demangler) and keeps what the project
reads from it: the feedback text, admissible commands, won flag and raw facts. Every engine call runs inside
`envs.alfworld.speedups.fast_engine()`. The planner expert lives in `envs.alfworld.planner`.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

from envs.alfworld import speedups

INSTALL_HINT = "pip install 'gflowvlm[alfworld]'"


class AlfworldMissingError(ImportError):
    """Raised (one line, naming the install command) when the optional `alfworld` extra is absent."""


def require_alfworld() -> SimpleNamespace:
    """The engine modules, imported lazily; a one-line `AlfworldMissingError` when the extra is missing."""
    try:
        modules = SimpleNamespace(
            info=importlib.import_module("alfworld.info"),
            constants=importlib.import_module("alfworld.gen.constants"),
            goal_library=importlib.import_module("alfworld.gen.goal_library"),
            textworld=importlib.import_module("textworld"),
            pddl=importlib.import_module("textworld.envs.pddl.pddl"),
            tw_env=importlib.import_module("alfworld.agents.environment.alfred_tw_env"),
            fast_downward=importlib.import_module("fast_downward"),
            pddl_logic=importlib.import_module("textworld.envs.pddl.logic"),
            textgen=importlib.import_module("textworld.envs.pddl.textgen"),
            tw_logic=importlib.import_module("textworld.logic"),
            misc=importlib.import_module("alfworld.agents.utils.misc"),
        )
    except ImportError as error:
        missing = getattr(error, "name", None) or "alfworld"
        raise AlfworldMissingError(
            f"ALFWorld needs the optional alfworld extra (missing module {missing!r}); "
            f"install it with: {INSTALL_HINT}") from None
    return modules


def cache_root() -> str:
    """Where generated data lives by default (GFLOWVLM_CACHE_DIR overrides ~/.cache/gflowvlm)."""
    root = os.environ.get("GFLOWVLM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "gflowvlm")
    return os.path.abspath(root)


# Copies of fast-downward's library given back by closed engines, for the next engine to reuse. A copy is never
# unloaded: after dlclose of one copy, loading the next one could crash the process (a segfault inside dlopen,
# seen after a few engines were closed and others created, e.g. one env per image size in one test process).
_SPARE_LIBS: list[Any] = []
_SPARE_LOCK = threading.Lock()


def new_pddl_env(infos: Any) -> Any:
    """A textworld `PddlEnv`, on a closed engine's copy of fast-downward's library when one is spare (else on a
    fresh copy, which is what `PddlEnv()` always loads). Every PddlEnv of the project is made here."""
    alf = require_alfworld()
    with _SPARE_LOCK:
        if not _SPARE_LIBS:
            return alf.pddl.PddlEnv(infos)
        spare = _SPARE_LIBS.pop()
        fresh_copy = alf.fast_downward.load_lib
        alf.fast_downward.load_lib = lambda: spare   # what PddlEnv.__init__ calls to get its library
        try:
            return alf.pddl.PddlEnv(infos)
        finally:
            alf.fast_downward.load_lib = fresh_copy


def give_back_lib(downward_lib: Any) -> None:
    """Free a copy's planning state and keep the copy for `new_pddl_env` (instead of unloading it)."""
    downward_lib.cleanup()
    with _SPARE_LOCK:
        _SPARE_LIBS.append(downward_lib)


_UNKNOWN_TASK = "Your task is to: UNKNOWN GOAL."
_TASK_RULE = re.compile(r'"rhs": "(Your task is to: [^"]*)"')


@lru_cache(maxsize=1)
def base_grammar() -> str:
    """alfred.twl2 as shipped (task sentence still "UNKNOWN GOAL")."""
    with open(require_alfworld().info.ALFRED_TWL2_PATH) as f:
        return f.read()


@dataclass
class EngineState:
    """What one engine step leaves behind, in the engine's own terms."""
    feedback: str
    admissible: list[str]
    won: bool
    facts: list[Any]            # textworld Propositions over raw (lower-case ALFRED) ids
    names: dict[str, str]       # raw id -> display name ("apple 1")


class EngineGame:
    """One textworld PDDL engine, reusable across game files (each engine loads its own copy of
    fast-downward's library, so several can live in one process)."""

    def __init__(self) -> None:
        alf = require_alfworld()
        infos = alf.textworld.EnvInfos(won=True, admissible_commands=True)
        self._pddl_env = new_pddl_env(infos)
        # ALFWorld's demangler turns ids like Apple_bar_... into "apple 1", exactly as AlfredTWEnv shows them.
        self._env = alf.tw_env.AlfredDemangler()(self._pddl_env)
        self.game_file: str | None = None
        self.goal = ""
        self.state: EngineState | None = None
        self._closed = False

    def close(self) -> None:
        """Give this engine's copy of fast-downward's library back for the next engine (see `_SPARE_LIBS`);
        the engine is unusable afterwards."""
        if not self._closed:
            self._closed = True
            give_back_lib(self._pddl_env.downward_lib)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this ALFWorld engine is closed")

    def load(self, game_file: str) -> None:
        self._check_open()
        with open(game_file) as f:
            game = json.load(f)
        self.load_data(game)
        self.game_file = game_file

    def load_data(self, game: dict) -> None:
        """Load a game from its `game.tw-pddl` content (the generator verifies games before writing them)."""
        # Every ALFWorld grammar is alfred.twl2 with one task sentence put in. Loading it with the sentence
        # taken back out makes the (slow) grammar parse identical for all games, so it is parsed once; the
        # sentence is put back into the intro text after reset.
        self._check_open()
        problem, grammar = game["pddl_problem"], game["grammar"]
        self.goal = problem[problem.find("(:goal"):]
        match = _TASK_RULE.search(grammar)
        self._task_line = match.group(1) if match else _UNKNOWN_TASK
        if match:
            grammar = grammar[:match.start(1)] + _UNKNOWN_TASK + grammar[match.end(1):]
        data = dict(game, grammar=grammar)
        with speedups.fast_engine(replanning=False):
            self._env.load(data)
        self.game_file = "<memory>"

    def reset(self) -> EngineState:
        self._check_open()
        if self.game_file is None:
            raise RuntimeError("load a game file before reset()")
        with speedups.fast_engine(replanning=False):
            raw = self._env.reset()
        self.state = self._read(raw, intro=True)
        return self.state

    def step(self, command: str) -> EngineState:
        self._check_open()
        with speedups.fast_engine(replanning=False):
            raw, _, _ = self._env.step(command)
        self.state = self._read(raw)
        return self.state

    def _read(self, raw: Any, intro: bool = False) -> EngineState:
        infos = raw["_entity_infos"]
        names = {key: info.name.strip() for key, info in infos.items()}
        feedback = str(raw.feedback)
        if intro:
            feedback = feedback.replace(_UNKNOWN_TASK, self._task_line)
        return EngineState(feedback=feedback, admissible=list(raw["admissible_commands"]),
                           won=bool(raw["won"]), facts=list(raw["_facts"]), names=names)
