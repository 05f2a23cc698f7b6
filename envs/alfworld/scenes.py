"""Floor plans: the fixed room layouts every generated game is set in.

ALFRED numbers its AI2-THOR rooms: kitchens 1-30, living rooms 201-230, bedrooms 301-330, bathrooms 401-430,
and holds out 1-6 of each room type for its unseen splits. A generated floor plan carries the same number and is
a pure function of it (never of the user's seed), so the `train` and `id` splits share layouts while `ood` only
uses the held-out numbers. No two floor plans have the same layout signature (room + receptacle counts + lamps),
so an `ood` layout is never a `train` layout under another number.

Receptacles get ALFRED-style ids that encode their position (`CounterTop|+00.69|+00.95|-02.48`, written
`CounterTop_bar__plus_00_dot_69_bar__plus_00_dot_95_bar__minus_02_dot_48`), and each stands at its own
location `loc|x|z|rotation|horizon` in quarter-metre grid units, like the official games.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from envs.alfworld import vocabulary as vocab

SIZE_CLASSES = ("small", "medium", "large")
# Receptacle counts of each size class; "large" is the official dataset's scale (about 20).
SIZE_RECEPTACLES = {"small": (6, 10), "medium": (11, 15), "large": (16, 22)}
# Furniture that stands in the room rather than against a wall.
FREESTANDING = frozenset({"Bed", "DiningTable", "CoffeeTable", "Sofa", "Ottoman", "ArmChair", "Cart"})
# Typical heights (metres) used in the ids; they only make the ids look like ALFRED's.
HEIGHTS = {"Cabinet": 1.9, "Shelf": 1.2, "Microwave": 1.6, "CounterTop": 0.95, "SinkBasin": 0.9,
           "StoveBurner": 0.92, "CoffeeMachine": 0.9, "Toaster": 0.9, "Drawer": 0.6, "Fridge": 0.0,
           "GarbageCan": 0.0, "Toilet": 0.0, "BathtubBasin": 0.3, "Bed": 0.5, "Sofa": 0.4}


def encode_number(value: float) -> str:
    text = "00.00" if abs(value) < 0.005 else f"{value:+06.2f}"
    return text.replace("+", "_plus_").replace("-", "_minus_").replace(".", "_dot_")


def thing_id(kind: str, x: float, y: float, z: float) -> str:
    """ALFRED's id for an object or receptacle of class `kind` at (x, y, z), in PDDL-safe spelling."""
    coordinates = [encode_number(x), encode_number(y), encode_number(z)]
    # Basins are ALFRED sub-objects (Sink|...|SinkBasin), which ALFWorld shows as "sinkbasin 1".
    if kind in ("SinkBasin", "BathtubBasin"):
        return "_bar_".join([kind[: -len("Basin")], *coordinates, kind])
    return "_bar_".join([kind, *coordinates])


def location_id(grid_x: int, grid_z: int, rotation: int, horizon: int) -> str:
    parts = [str(v).replace("-", "_minus_") for v in (grid_x, grid_z, rotation, horizon)]
    return "loc_bar_" + "_bar_".join(parts)


@dataclass(frozen=True)
class Placed:
    """A receptacle (or lamp) of a floor plan: its class, id, position and where an agent stands to use it."""
    kind: str
    id: str
    x: float
    y: float
    z: float
    location: str


@dataclass(frozen=True)
class FloorPlan:
    number: int
    room: str
    size_class: str
    width: float
    depth: float
    receptacles: tuple[Placed, ...]
    lamps: tuple[tuple[Placed, str], ...]   # (lamp, id of the receptacle it stands on)

    def kinds(self) -> frozenset[str]:
        return _kinds(self.receptacles)

    def lamp_kinds(self) -> frozenset[str]:
        return frozenset(lamp.kind for lamp, _ in self.lamps)

    def signature(self) -> tuple:
        """The layout identity the splits keep apart: room, receptacle counts and lamps."""
        counts = {}
        for r in self.receptacles:
            counts[r.kind] = counts.get(r.kind, 0) + 1
        return (self.room, tuple(sorted(counts.items())), tuple(sorted(lamp.kind for lamp, _ in self.lamps)))


@lru_cache(maxsize=None)
def _kinds(receptacles: tuple[Placed, ...]) -> frozenset[str]:
    return frozenset(r.kind for r in receptacles)


def room_of(number: int) -> str:
    for room in vocab.ROOMS:
        if number in vocab.constants().SCENE_TYPE[room]:
            return room
    raise ValueError(f"{number} is not an ALFRED floor-plan number")


def size_class_of(number: int) -> str:
    # Cycling by number spreads every size over ALFRED's train numbers and its six held-out ones alike.
    return SIZE_CLASSES[number % 3]


def _draw_counts(room: str, size_class: str, rng: random.Random) -> dict[str, int]:
    bounds = vocab.ROOM_RECEPTACLES[room]
    counts = {kind: low for kind, (low, _) in bounds.items()}
    low, high = SIZE_RECEPTACLES[size_class]
    capacity = sum(high_count for _, high_count in bounds.values())
    target = min(rng.randint(low, high), capacity)
    while sum(counts.values()) < target:
        open_kinds = sorted(k for k, (_, top) in bounds.items() if counts[k] < top)
        counts[rng.choice(open_kinds)] += 1
    return counts


def _wall_slots(width: float, depth: float) -> list[tuple[float, float]]:
    inset, spacing = 0.3, 0.5
    xs = [-width / 2 + inset + spacing * i for i in range(int((width - 2 * inset) / spacing) + 1)]
    zs = [-depth / 2 + inset + spacing * i for i in range(int((depth - 2 * inset) / spacing) + 1)]
    slots = [(x, -depth / 2 + inset) for x in xs] + [(x, depth / 2 - inset) for x in xs]
    slots += [(-width / 2 + inset, z) for z in zs[1:-1]] + [(width / 2 - inset, z) for z in zs[1:-1]]
    return slots


def _interior_slots(width: float, depth: float) -> list[tuple[float, float]]:
    return [(x / 4, z / 4) for x in range(int(-width * 2) + 4, int(width * 2) - 3, 3)
            for z in range(int(-depth * 2) + 4, int(depth * 2) - 3, 3)]


def _stand_point(x: float, z: float, used: set[str], y: float) -> str:
    """An agent location in front of (x, z): 0.75 m towards the room centre, facing the receptacle."""
    norm = max((x * x + z * z) ** 0.5, 1e-6)
    step = min(0.75, norm)
    sx, sz = x - step * x / norm, z - step * z / norm
    grid_x, grid_z = round(sx / 0.25), round(sz / 0.25)
    dx, dz = x - sx, z - sz
    rotation = (0 if dz > 0 else 2) if abs(dz) >= abs(dx) else (1 if dx > 0 else 3)
    horizon = -30 if y > 1.5 else (30 if y > 0.8 else 60)
    loc = location_id(grid_x, grid_z, rotation, horizon)
    while loc in used:  # two receptacles seen from one spot still get distinct locations
        horizon += 15
        loc = location_id(grid_x, grid_z, rotation, horizon)
    used.add(loc)
    return loc


def _place(kind: str, x: float, z: float, rng: random.Random, used_ids: set[str], used_locs: set[str]) -> Placed:
    y = HEIGHTS.get(kind, 0.75) + rng.choice((0.0, 0.01, 0.02, 0.05))
    ident = thing_id(kind, x, y, z)
    while ident in used_ids:  # stacked drawers/cabinets: same spot, different heights
        y += 0.17
        ident = thing_id(kind, x, y, z)
    used_ids.add(ident)
    return Placed(kind, ident, round(x, 2), round(y, 2), round(z, 2), _stand_point(x, z, used_locs, y))


def _build(number: int, rng: random.Random) -> FloorPlan:
    room, size_class = room_of(number), size_class_of(number)
    counts = _draw_counts(room, size_class, rng)
    total = sum(counts.values())
    width = round(rng.uniform(3.0, 4.0) + 0.2 * total, 1)
    depth = round(rng.uniform(3.0, 4.0) + 0.12 * total, 1)
    walls, interior = _wall_slots(width, depth), _interior_slots(width, depth)
    rng.shuffle(walls)
    rng.shuffle(interior)
    used_ids: set[str] = set()
    used_locs: set[str] = set()
    receptacles = []
    for kind in sorted(counts):
        for _ in range(counts[kind]):
            pool = interior if kind in FREESTANDING and interior else walls
            x, z = pool.pop() if pool else walls.pop()
            receptacles.append(_place(kind, x, z, rng, used_ids, used_locs))
    lamps = []
    if room in ("LivingRoom", "Bedroom"):
        hosts = [r for r in receptacles if r.kind in vocab.LAMP_HOSTS]
        for lamp_kind in sorted(rng.sample(vocab.LAMPS, rng.randint(1, len(vocab.LAMPS)))):
            host = rng.choice(hosts)
            lamp_id = thing_id(lamp_kind, host.x + 0.1, host.y + 0.3, host.z)
            lamps.append((Placed(lamp_kind, lamp_id, host.x, host.y, host.z, host.location), host.id))
    return FloorPlan(number, room, size_class, width, depth, tuple(receptacles), tuple(lamps))


@lru_cache(maxsize=1)
def all_floor_plans() -> dict[int, FloorPlan]:
    """Every floor plan, built in number order so each layout signature is unique across all of them."""
    plans: dict[int, FloorPlan] = {}
    seen: set[tuple] = set()
    numbers = sorted(vocab.constants().SCENE_NUMBERS)
    for number in numbers:
        rng = random.Random(1_000_003 * number + 7)
        plan = _build(number, rng)
        while plan.signature() in seen:
            plan = _build(number, rng)
        seen.add(plan.signature())
        plans[number] = plan
    return plans


def split_floor_plans(unseen: bool) -> list[FloorPlan]:
    plans = all_floor_plans()
    return [plans[n] for room in vocab.ROOMS for n in vocab.floor_plans(room, unseen)]
