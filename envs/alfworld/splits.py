"""The three generated splits and the object-receptacle pairings each may use.

- `train` and `id` draw from ALFRED's training floor plans (7-30 of each room type) and from the *seen*
  pairings; they differ only in their instances (object placement, distractors, start position), because each
  game's random stream is keyed by its split name.
- `ood` draws from ALFRED's held-out floor plans (1-6 of each room type) and only from *unseen* pairings, so an
  `ood` game puts together an object and a receptacle (or lamp) that no `train` game ever pairs: the paper's
  "unseen scenes".

A pairing is (object class, destination receptacle class) for the placement tasks and (object class, lamp
class) for look_at_obj_in_light. About a quarter of all pairings are unseen, chosen by a fixed hash.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

from envs.alfworld import vocabulary as vocab
from envs.alfworld.scenes import FloorPlan, split_floor_plans

SPLITS = ("train", "id", "ood")
UNSEEN_PERCENT = 25


def is_unseen_pairing(obj: str, partner: str) -> bool:
    # crc32 is stable across runs and platforms, unlike hash().
    return zlib.crc32(f"{obj}|{partner}".encode()) % 100 < UNSEEN_PERCENT


def uses_unseen(split: str) -> bool:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    return split == "ood"


@dataclass(frozen=True)
class Pairing:
    task_type: str
    obj: str
    partner: str        # destination receptacle class, or the lamp class for look_at_obj_in_light

    @property
    def is_look(self) -> bool:
        return self.task_type == "look_at_obj_in_light"


def _object_fits_elsewhere(plan: FloorPlan, obj: str, destination: str | None) -> bool:
    """The object can start somewhere that does not already satisfy the goal."""
    return any(vocab.can_contain(kind, obj) for kind in plan.kinds() if kind != destination)


def pairings_in(plan: FloorPlan, task_type: str) -> list[Pairing]:
    """Every pairing of `task_type` that a game in this floor plan can pose, seen or unseen."""
    if plan.room not in vocab.task_rooms(task_type):
        return []
    objects = [o for o in vocab.ROOM_OBJECTS[plan.room] if _object_fits_elsewhere(plan, o, None)]
    if task_type == "look_at_obj_in_light":
        return [Pairing(task_type, o, lamp) for o in objects for lamp in sorted(plan.lamp_kinds())]
    appliance = vocab.TASK_APPLIANCE.get(task_type)
    if appliance is not None:
        if appliance not in plan.kinds():
            return []
        objects = [o for o in objects if vocab.has_property(o, vocab.TASK_PROPERTY[task_type])]
    destinations = sorted(k for k in plan.kinds() if k not in vocab.NOT_DESTINATIONS and k != appliance)
    return [Pairing(task_type, o, d) for o in objects for d in destinations
            if vocab.can_contain(d, o) and _object_fits_elsewhere(plan, o, d)]


Choice = tuple[FloorPlan, tuple[Pairing, ...]]


@lru_cache(maxsize=None)
def split_choices(split: str, task_type: str, size: str | None = None) -> tuple[Choice, ...]:
    """(floor plan, allowed pairings) for a split and task type; `size` keeps one size class."""
    unseen = uses_unseen(split)
    choices = []
    for plan in split_floor_plans(unseen):
        if size is not None and plan.size_class != size:
            continue
        allowed = [p for p in pairings_in(plan, task_type) if is_unseen_pairing(p.obj, p.partner) == unseen]
        if allowed:
            choices.append((plan, tuple(allowed)))
    return tuple(choices)
