"""The planner expert: fast-downward on the part of a game that matters to its goal.

ALFWorld's reliable expert is fast-downward replanning from the current state. On a dataset-size game it is
slow, sometimes very slow: with about 50 portable objects a pick-two goal took 13-70 s per plan here, because
every object can be picked up and moved. Objects that the goal does not name cannot help reach it (the ALFRED
domain has no capacity limits and no action depends on an unrelated object), so the planner is given the
*relevant sub-problem*: the agent, the objects of the goal's types and whatever the agent holds, the
receptacles that hold them, the goal's destination and appliance receptacles, and all facts among those. Any
plan of the sub-problem is a plan of the full game; it is written with the full game's object names, so its
commands are the full game's admissible commands. Planning then takes milliseconds at any scene size.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Iterable

from envs.alfworld.engine import base_grammar, new_pddl_env, require_alfworld
from envs.alfworld.speedups import fast_engine

# Receptacle classes the domain's actions name (cleaning, heating, cooling): always kept, lower-case as in facts.
APPLIANCE_TYPES = frozenset({"sinkbasintype", "microwavetype", "fridgetype"})
# Every class the domain names as a constant must stay declared.
DOMAIN_CONSTANTS = APPLIANCE_TYPES | {"knifetype", "butterknifetype"}
_GOAL_OBJECT_TYPE = re.compile(r"\(\s*objectType\s+\?\S+\s+(\S+?)\s*\)", re.IGNORECASE)
_GOAL_RECEPTACLE_TYPE = re.compile(r"\(\s*receptacleType\s+\?\S+\s+(\S+?)\s*\)", re.IGNORECASE)
_TOKEN = re.compile(r"\(|\)|[^\s()]+")


@dataclass
class Problem:
    """A PDDL problem as plain data: typed objects, ground init atoms, and the goal's text."""
    objects: dict[str, str]             # id (lower-case) -> type
    init: list[tuple[str, ...]]         # (predicate, arg, ...) all lower-case
    goal: str                           # "(:goal ...)" and the closing parenthesis of the define

    @classmethod
    def from_facts(cls, facts: Iterable[Any], goal: str) -> "Problem":
        """A live engine state (textworld Propositions) as a problem with the game's goal."""
        objects: dict[str, str] = {}
        init = []
        for fact in facts:
            if fact.name.startswith("new-axiom@"):   # fast-downward's derived predicates
                continue
            init.append((fact.name, *(v.name for v in fact.arguments)))
            for variable in fact.arguments:
                objects[variable.name] = variable.type
        return cls(objects, init, goal)

    def with_only(self, keep: set[str]) -> "Problem":
        objects = {k: t for k, t in self.objects.items() if k in keep}
        return Problem(objects, [a for a in self.init if all(x in objects for x in a[1:])], self.goal)

    def to_pddl(self, name: str = "relevant") -> str:
        lines = [f"(define (problem {name})", "(:domain alfred)", "(:objects"]
        lines += [f"{k} - {t}" for k, t in sorted(self.objects.items())]
        lines += [")", "(:init"] + [f"({' '.join(atom)})" for atom in self.init] + [")"]
        return "\n".join(lines) + "\n" + self.goal


def parse_problem(text: str) -> Problem:
    """Objects, init atoms and goal text of a PDDL problem (the subset of PDDL ALFWorld games use)."""
    goal_at = text.find("(:goal")
    if goal_at < 0:
        raise ValueError("PDDL problem has no (:goal")
    tokens = _TOKEN.findall(text[:goal_at].lower())
    objects: dict[str, str] = {}
    init: list[tuple[str, ...]] = []
    section, depth, pending, atom = None, 0, [], []
    for i, token in enumerate(tokens):
        if token == "(":
            depth += 1
            if depth == 2 and i + 1 < len(tokens):
                section = tokens[i + 1]
            atom = []
        elif token == ")":
            if section == ":init" and depth == 3 and atom and atom[0] != "=":
                init.append(tuple(atom))
            depth -= 1
            atom = []
        elif section == ":objects" and depth == 2 and token != ":objects":
            pending.append(token)
            if len(pending) >= 3 and pending[-2] == "-":
                for name in pending[:-2]:
                    objects[name] = pending[-1]
                pending = []
        elif section == ":init" and depth == 3:
            atom.append(token)
    return Problem(objects, init, text[goal_at:])


def relevant_part(problem: Problem) -> Problem:
    """The sub-problem that decides the goal (see module docstring)."""
    goal_otypes = {t.lower() for t in _GOAL_OBJECT_TYPE.findall(problem.goal)}
    goal_rtypes = {t.lower() for t in _GOAL_RECEPTACLE_TYPE.findall(problem.goal)}
    by_predicate: dict[str, list[tuple[str, ...]]] = {}
    for atom in problem.init:
        by_predicate.setdefault(atom[0], []).append(atom)
    held = {a[2] for a in by_predicate.get("holds", [])}
    objects = {a[1] for a in by_predicate.get("objecttype", []) if a[2] in goal_otypes} | held
    receptacles = {a[2] for a in by_predicate.get("inreceptacle", []) if a[1] in objects}
    receptacles |= {a[1] for a in by_predicate.get("receptacletype", []) if a[2] in goal_rtypes | APPLIANCE_TYPES}
    goal_objects = {a[1] for a in by_predicate.get("objecttype", []) if a[2] in goal_otypes}
    if held - goal_objects:
        # Holding something unrelated: it must be put down first, anywhere it fits; keep every receptacle.
        receptacles |= {k for k, t in problem.objects.items() if t == "receptacle"}
    locations = {a[2] for a in by_predicate.get("receptacleatlocation", []) if a[1] in receptacles}
    locations |= {a[2] for a in by_predicate.get("atlocation", [])}
    classes = {a[2] for a in by_predicate.get("objecttype", []) + by_predicate.get("receptacletype", [])
               if a[1] in objects | receptacles}
    classes |= goal_otypes | goal_rtypes | DOMAIN_CONSTANTS
    keep = objects | receptacles | locations | {k for k in classes if k in problem.objects}
    keep |= {k for k, t in problem.objects.items() if t == "agent"}
    return problem.with_only(keep)


def display_names(entity_ids: Iterable[str]) -> dict[str, str]:
    """The names ALFWorld shows for a game's entities ("apple 2"), from its own demangler."""
    infos = {i: SimpleNamespace(id=i) for i in entity_ids}
    demangler = require_alfworld().misc.Demangler(game_infos=infos)
    return {i: demangler.demangle_alfred_name(i).strip() for i in infos}


class Planner:
    """fast-downward, run on relevant sub-problems, speaking the full game's names. One per process is enough
    (`shared_planner()`): calls are serialized by the engine lock, and each planner maps its own 34 MB copy of
    fast-downward's library."""

    def __init__(self) -> None:
        alf = require_alfworld()
        self._env = new_pddl_env(alf.textworld.EnvInfos(won=True, admissible_commands=True))
        with open(alf.info.ALFRED_PDDL_PATH) as f:
            self._domain = f.read()

    def _load(self, problem: Problem, names: dict[str, str]) -> None:
        game = {"pddl_domain": self._domain, "grammar": base_grammar(), "pddl_problem": problem.to_pddl()}
        self._env.load(game)
        for info in self._env._entity_infos.values():   # textworld's entity table, named as in the full game
            info.name = names.get(info.id, info.id)

    def plan(self, problem: Problem, names: dict[str, str]) -> list[str]:
        """The planner's commands from the problem's state to its goal ([] if already won or unsolvable)."""
        with fast_engine():   # one context: no other thread reloads this planner mid-plan
            self._load(relevant_part(problem), names)
            return list(self._env._pddl_state.replan(self._env._entity_infos))

    def verified_plan(self, problem: Problem, names: dict[str, str]) -> list[str] | None:
        """A plan replayed command by command (each admissible) to a win; None if the goal holds at the start,
        no plan exists, or the replay fails."""
        with fast_engine():
            commands = self.plan(problem, names)
            state = self._env.reset()
            if state["won"] or not commands:
                return None
            for command in commands:
                if command not in state["admissible_commands"]:
                    return None
                state, _, _ = self._env.step(command)
        return commands if state["won"] else None


_SHARED: Planner | None = None


def shared_planner() -> Planner:
    """This process's planner, created on first use."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Planner()
    return _SHARED
