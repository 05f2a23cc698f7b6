"""Goal-condition progress of an ALFWorld task, computed from the engine's facts.

ALFRED scores partial success as the fraction of a task's goal conditions that hold (its
`goal_conditions_met`); RL4VLM's ALFWorld reward adds that fraction to 50 * won. ALFRED checks its conditions
on AI2-THOR metadata; here they are read from the PDDL engine's facts, and each task also counts getting hold
of the object, so that progress moves at every stage of the task:

| task type | conditions (any object of the task's class counts) |
|---|---|
| pick_and_place_simple | found (held, or already in a destination), placed (in a destination receptacle) |
| pick_clean/heat/cool_then_place_in_recep | found, cleaned/heated/cooled, placed while clean/hot/cold |
| pick_two_obj_and_place | found one, placed one, found two (held while one is placed), two in one receptacle |
| look_at_obj_in_light | found (held), lamp switched on, held at a lit lamp |

A destination receptacle is any receptacle of the task's parent class. Every condition of a won game holds, and
along a planner walkthrough the count never falls, so progress climbs to 1 exactly as the task is solved.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

STATE_PREDICATE = {
    "pick_clean_then_place_in_recep": "isclean",
    "pick_heat_then_place_in_recep": "ishot",
    "pick_cool_then_place_in_recep": "iscool",
}
CONDITION_NAMES = {
    "pick_and_place_simple": ("found", "placed"),
    "pick_clean_then_place_in_recep": ("found", "cleaned", "placed clean"),
    "pick_heat_then_place_in_recep": ("found", "heated", "placed hot"),
    "pick_cool_then_place_in_recep": ("found", "cooled", "placed cold"),
    "pick_two_obj_and_place": ("found one", "placed one", "found two", "placed two"),
    "look_at_obj_in_light": ("found", "lamp on", "held under lamp"),
}


@dataclass(frozen=True)
class Targets:
    """What a task is about, as the lower-case class names used in facts ("apple", "countertop")."""
    task_type: str
    obj: str
    partner: str    # destination receptacle class, or lamp class for look_at_obj_in_light

    @classmethod
    def from_traj_data(cls, traj: dict) -> "Targets":
        params = traj["pddl_params"]
        task_type = traj["task_type"]
        if task_type not in CONDITION_NAMES:
            raise ValueError(f"unsupported ALFWorld task type {task_type!r}")
        partner = params["toggle_target"] if task_type == "look_at_obj_in_light" else params["parent_target"]
        return cls(task_type, params["object_target"].lower(), partner.lower())


def condition_flags(targets: Targets, atoms: Iterable[tuple[str, ...]]) -> tuple[bool, ...]:
    """Which of the task's goal conditions hold, in the order of CONDITION_NAMES[task_type]."""
    kind: dict[str, str] = {}
    by_predicate: dict[str, list[tuple[str, ...]]] = {}
    for atom in atoms:
        by_predicate.setdefault(atom[0], []).append(atom)
        if atom[0] in ("objecttype", "receptacletype"):
            kind[atom[1]] = atom[2]
    obj_type, partner_type = targets.obj + "type", targets.partner + "type"
    is_target = {o for o, t in kind.items() if t == obj_type}
    held = {a[2] for a in by_predicate.get("holds", []) if a[2] in is_target}
    placed_in = Counter()
    placed: set[str] = set()
    for _, o, r in by_predicate.get("inreceptacle", []):
        if o in is_target and kind.get(r) == partner_type:
            placed_in[r] += 1
            placed.add(o)

    if targets.task_type == "look_at_obj_in_light":
        lamps = {o for o, t in kind.items() if t == partner_type}
        lit = {a[1] for a in by_predicate.get("istoggled", []) if a[1] in lamps}
        here = {a[2] for a in by_predicate.get("atlocation", [])}
        at_recep = {a[1] for a in by_predicate.get("receptacleatlocation", []) if a[2] in here}
        lit_here = any(a[1] in lit and a[2] in at_recep for a in by_predicate.get("inreceptacle", []))
        return bool(held), bool(lit), bool(held) and lit_here
    if targets.task_type == "pick_two_obj_and_place":
        most = max(placed_in.values(), default=0)
        return (bool(held) or most >= 1, most >= 1, most >= 2 or (most >= 1 and bool(held)), most >= 2)
    found = bool(held) or bool(placed)
    if targets.task_type == "pick_and_place_simple":
        return found, bool(placed)
    changed = {a[1] for a in by_predicate.get(STATE_PREDICATE[targets.task_type], []) if a[1] in is_target}
    return found, bool(changed), bool(changed & placed)


def progress(targets: Targets, atoms: Iterable[tuple[str, ...]]) -> float:
    """Fraction of the task's goal conditions that hold, in [0, 1]."""
    flags = condition_flags(targets, atoms)
    return sum(flags) / len(flags)
