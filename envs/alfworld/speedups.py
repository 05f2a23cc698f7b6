"""Make textworld's PDDL engine fast enough for RL, without changing a single output.

Profiling a dataset-size game (20 receptacles, 50 objects) showed where a 50 ms step goes:
- textworld re-parses grammar text with tatsu on every derivation: one parse per admissible command, every
  step, plus each conjunctive query inside them (`textgen._parse_and_convert`, `textworld.logic`'s);
- derivation contexts are deep-copied at every symbol (`textgen.copy_context`), entities and all;
- loading a game parses the whole ALFRED grammar (`pddl.logic._parse_and_convert`), and every `reset()`
  translates the PDDL problem again with fast-downward's Python translator (`fast_downward.pddl2sas`).

All of these are pure functions of their text, so `fast_engine()` memoizes them (handing callers fresh
copies of anything textworld later mutates) and copies contexts one level deep (nothing mutates the entities
they point to). A dataset-size step drops to under 10 ms; re-resetting a game skips its translation.

textworld also translates every game a second time, with the translator's search optimizations, for its
replanner. A played game never replans here (the expert plans on a sub-problem, `envs.alfworld.planner`), so
`fast_engine(replanning=False)` hands the replanner the plain translation instead: the same planning task,
unpruned, and half the cost of loading a game.

The patches exist only inside the context, under a re-entrant lock (textworld's engine is not thread-safe
anyway: the translator swaps sys.stdout and overwrites sys.argv, which the context also restores). Set
`SPEEDUPS = False` to run textworld untouched (the tests compare both).
"""
from __future__ import annotations

import contextlib
import copy
import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterator

SPEEDUPS = True
_LOCK = threading.RLock()
_depth = 0
_restore: list[tuple[Any, str, Any]] = []
_MEMOS: dict[str, "_Memo"] = {}


class _Memo:
    """An LRU memo of a pure function; `copier` gives each caller its own copy of what it may mutate."""

    def __init__(self, function: Callable, size: int, copier: Callable | None):
        self.function, self.size, self.copier = function, size, copier
        self.results: OrderedDict = OrderedDict()

    def __call__(self, *args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key in self.results:
            self.results.move_to_end(key)
        else:
            self.results[key] = self.function(*args, **kwargs)
            if len(self.results) > self.size:
                self.results.popitem(last=False)
        result = self.results[key]
        return self.copier(result) if self.copier else result


def _copy_symbols(value: Any) -> Any:
    """New grammar Symbol objects at every level (textworld assigns their `context` while deriving), sharing
    only immutable strings: what a fresh parse returns, far cheaper than copy.deepcopy."""
    if isinstance(value, list):
        return [_copy_symbols(v) for v in value]
    clone = copy.copy(value)
    for attribute in ("symbol", "expression"):
        inner = getattr(clone, attribute, None)
        if inner is not None and not isinstance(inner, str):
            setattr(clone, attribute, _copy_symbols(inner))
    return clone


def _copy_list(value: Any) -> Any:
    # textworld.logic parses into value objects (Predicate, Variable, ...); only a list could be altered.
    return list(value) if isinstance(value, list) else value


def _shallow_context_copy(context: dict) -> dict:
    return {"state": context["state"], "facts": context["facts"], "variables": dict(context["variables"]),
            "mapping": dict(context["mapping"]), "entity_infos": context["entity_infos"]}


def _plain_translation(memo: _Memo) -> Callable:
    def pddl2sas(domain, problem, verbose=False, optimize=False):
        return memo(domain, problem, verbose=verbose, optimize=False)
    return pddl2sas


def _install(replanning: bool) -> None:
    from envs.alfworld.engine import require_alfworld

    alf = require_alfworld()
    # Played games and the planner's sub-problems get separate translation memos, so that the planner's
    # one-off problems never push out a game that is about to be reset again (e.g. K samples per task).
    translations = "planner" if replanning else "games"
    memoized = [(alf.textgen, "_parse_and_convert", "grammar", 4096, _copy_symbols),
                (alf.pddl_logic, "_parse_and_convert", "logic", 8, None),   # GameLogic only reads the result
                (alf.tw_logic, "_parse_and_convert", "queries", 4096, _copy_list),
                (alf.fast_downward, "pddl2sas", translations, 32 if translations == "games" else 16, None)]
    for module, name, key, size, copier in memoized:
        original = getattr(module, name)
        if key not in _MEMOS or _MEMOS[key].function is not original:
            _MEMOS[key] = _Memo(original, size, copier)
        _restore.append((module, name, original))
        setattr(module, name, _MEMOS[key])
    if not replanning:
        alf.fast_downward.pddl2sas = _plain_translation(_MEMOS[translations])
    _restore.append((alf.textgen, "copy_context", alf.textgen.copy_context))
    alf.textgen.copy_context = _shallow_context_copy


@contextlib.contextmanager
def fast_engine(replanning: bool = True) -> Iterator[None]:
    """Run textworld calls with the speedups (see module docstring); sys.argv is restored afterwards.
    A nested context keeps the outer one's settings."""
    global _depth
    with _LOCK:
        saved_argv = list(sys.argv)
        if _depth == 0 and SPEEDUPS:
            _install(replanning)
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                while _restore:
                    module, name, original = _restore.pop()
                    setattr(module, name, original)
            sys.argv[:] = saved_argv
