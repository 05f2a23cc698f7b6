"""What a generated household may contain: ALFRED's own rooms, receptacles, objects and rules.

Object/receptacle compatibility (`canContain`), the object properties (heatable, coolable, cleanable,
toggleable), the openable receptacles, the rooms each task type happens in and the train/test floor-plan
numbers all come from `alfworld.gen.constants` (ALFRED's tables). This module adds only what ALFRED keeps in
its AI2-THOR scene files rather than in a table: which receptacles and portable objects each room type holds.
"""
from __future__ import annotations

from functools import lru_cache
from types import MappingProxyType

from envs.alfworld.engine import require_alfworld

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
ROOMS = ("Kitchen", "LivingRoom", "Bedroom", "Bathroom")
LAMPS = ("DeskLamp", "FloorLamp")

# Receptacles per room: type -> (min, max) count in a floor plan. Counts reach ALFRED's scale (about 20
# receptacles in a big kitchen).
ROOM_RECEPTACLES = MappingProxyType({
    "Kitchen": {"CounterTop": (1, 3), "Fridge": (1, 1), "Microwave": (1, 1), "SinkBasin": (1, 1),
                "GarbageCan": (1, 1), "Cabinet": (1, 10), "Drawer": (0, 8), "StoveBurner": (0, 4),
                "CoffeeMachine": (0, 1), "Toaster": (0, 1), "DiningTable": (0, 1), "Shelf": (0, 3),
                "SideTable": (0, 1)},
    "LivingRoom": {"Sofa": (1, 1), "ArmChair": (0, 2), "CoffeeTable": (0, 2), "SideTable": (1, 3),
                   "DiningTable": (0, 1), "TVStand": (0, 1), "Shelf": (0, 6), "Drawer": (0, 4),
                   "Cabinet": (0, 4), "Dresser": (0, 1), "GarbageCan": (0, 1), "Ottoman": (0, 1),
                   "Safe": (0, 1)},
    "Bedroom": {"Bed": (1, 1), "Desk": (0, 1), "SideTable": (1, 2), "Dresser": (0, 1), "Drawer": (0, 8),
                "Shelf": (0, 6), "ArmChair": (0, 1), "GarbageCan": (0, 1), "LaundryHamper": (0, 1),
                "Safe": (0, 1), "Cabinet": (0, 2)},
    "Bathroom": {"Toilet": (1, 1), "SinkBasin": (1, 2), "BathtubBasin": (0, 1), "CounterTop": (0, 1),
                 "Cabinet": (0, 4), "Drawer": (0, 4), "TowelHolder": (0, 1), "HandTowelHolder": (0, 2),
                 "ToiletPaperHanger": (0, 1), "GarbageCan": (1, 1), "Shelf": (0, 2), "Dresser": (0, 1),
                 "Cart": (0, 1)},
})

# Portable objects per room (ALFRED object classes found in such rooms).
ROOM_OBJECTS = MappingProxyType({
    "Kitchen": ("Apple", "Bread", "Egg", "Lettuce", "Potato", "Tomato", "Mug", "Cup", "Bowl", "Plate", "Pan",
                "Pot", "Kettle", "Knife", "ButterKnife", "Fork", "Spoon", "Spatula", "Ladle", "DishSponge",
                "SaltShaker", "PepperShaker", "SoapBottle", "WineBottle", "Glassbottle", "PaperTowel",
                "SprayBottle", "CreditCard", "CellPhone"),
    "LivingRoom": ("Book", "Box", "CellPhone", "CreditCard", "KeyChain", "Laptop", "Newspaper", "Pillow",
                   "RemoteControl", "Statue", "Vase", "Watch", "TissueBox", "WateringCan", "Bowl", "Plate",
                   "Candle"),
    "Bedroom": ("AlarmClock", "BaseballBat", "BasketBall", "Book", "Bowl", "CD", "CellPhone", "CreditCard",
                "KeyChain", "Laptop", "Mug", "Pen", "Pencil", "Pillow", "TennisRacket", "Cloth", "Box", "Watch",
                "Statue", "Vase"),
    "Bathroom": ("Candle", "Cloth", "HandTowel", "SoapBar", "SoapBottle", "SprayBottle", "ToiletPaper", "Towel",
                 "TissueBox", "Plunger", "DishSponge", "Glassbottle"),
})

# Receptacles a lamp can stand on (the look task needs the lamp `inReceptacle` somewhere).
LAMP_HOSTS = ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable")
# The appliance each state-changing task uses; it is never that task's destination.
TASK_APPLIANCE = MappingProxyType({
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
})
# Which ALFRED property list gates the task's object.
TASK_PROPERTY = MappingProxyType({
    "pick_clean_then_place_in_recep": "Cleanable",
    "pick_heat_then_place_in_recep": "Heatable",
    "pick_cool_then_place_in_recep": "Coolable",
})
# Basins never serve as a task's destination (a clean task ends elsewhere; ALFRED's tasks do the same).
NOT_DESTINATIONS = frozenset({"SinkBasin", "BathtubBasin"})


@lru_cache(maxsize=1)
def constants():
    return require_alfworld().constants


def can_contain(receptacle_type: str, object_type: str) -> bool:
    return object_type in constants().VAL_RECEPTACLE_OBJECTS.get(receptacle_type, ())


def has_property(object_type: str, prop: str) -> bool:
    return object_type in constants().VAL_ACTION_OBJECTS[prop]


def is_openable(receptacle_type: str) -> bool:
    return receptacle_type in constants().OPENABLE_CLASS_SET


def task_rooms(task_type: str) -> frozenset[str]:
    return frozenset(constants().GOALS_VALID[task_type])


def floor_plans(room: str, unseen: bool) -> tuple[int, ...]:
    """ALFRED's floor-plan numbers of a room: the training ones, or the held-out test ones (1-6 of each room)."""
    numbers = constants().TEST_SCENE_NUMBERS if unseen else constants().TRAIN_SCENE_NUMBERS
    scene_range = constants().SCENE_TYPE[room]
    return tuple(n for n in numbers if n in scene_range)


def check_vocabulary() -> None:
    """Every listed class exists in ALFRED and every portable object fits some receptacle of its room."""
    known = set(constants().OBJECTS)
    for room in ROOMS:
        receptacles = ROOM_RECEPTACLES[room]
        for name in list(receptacles) + list(ROOM_OBJECTS[room]):
            if name not in known:
                raise ValueError(f"{name} is not an ALFRED class")
        for obj in ROOM_OBJECTS[room]:
            if not any(can_contain(r, obj) for r in receptacles):
                raise ValueError(f"{obj} fits no receptacle of a {room}")
