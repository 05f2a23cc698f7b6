"""A sampled household as the files ALFWorld reads: `game.tw-pddl` and `traj_data.json`.

`game.tw-pddl` is one JSON object: the ALFRED domain and grammar shipped inside the alfworld package (the
grammar with the task sentence in place of "UNKNOWN GOAL"), the PDDL problem, `solvable` (AlfredTWEnv skips
games without it) and the planner's `walkthrough`. `traj_data.json` carries what AlfredTWEnv and ALFWorld's
task templating read (`task_type`, `pddl_params`, `turk_annotations`), the ALFRED floor plan, and a
`gflowvlm` record of how the game was made.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from envs.alfworld import vocabulary as vocab
from envs.alfworld.engine import require_alfworld
from envs.alfworld.scenes import FloorPlan
from envs.alfworld.splits import Pairing

# Types the domain names as constants (CleanObject, HeatObject, CoolObject, SliceObject): always declared.
DOMAIN_OBJECT_TYPES = ("ButterKnife", "Knife")
DOMAIN_RECEPTACLE_TYPES = ("Fridge", "Microwave", "SinkBasin")
OBJECT_PROPERTIES = (("heatable", "Heatable"), ("coolable", "Coolable"), ("cleanable", "Cleanable"),
                     ("sliceable", "Sliceable"))


@dataclass(frozen=True)
class PlacedObject:
    kind: str
    id: str
    receptacle_id: str
    location: str
    portable: bool = True     # lamps stay where they are


@dataclass
class GameSpec:
    """Everything that defines one generated game."""
    plan: FloorPlan
    pairing: Pairing
    objects: list[PlacedObject]
    start_location: str
    sentence: str
    split: str
    seed: int
    index: int
    walkthrough: list[str] = field(default_factory=list)

    @property
    def task_type(self) -> str:
        return self.pairing.task_type

    def folder_name(self) -> str:
        # ALFRED's naming: <task>-<Object>-<MovableRecep>-<Parent or Lamp>-<floor plan>/<trial>
        task_dir = f"{self.task_type}-{self.pairing.obj}-None-{self.pairing.partner}-{self.plan.number}"
        return f"{task_dir}/trial_gflowvlm_{self.split}_s{self.seed}_{self.index:05d}"


@lru_cache(maxsize=1)
def _domain_and_grammar() -> tuple[str, str]:
    info = require_alfworld().info
    with open(info.ALFRED_PDDL_PATH) as f:
        domain = f.read()
    with open(info.ALFRED_TWL2_PATH) as f:
        grammar = f.read()
    return domain, grammar


def goal_pddl(pairing: Pairing) -> str:
    """ALFRED's goal for the task type (the string also closes the problem's `(define`)."""
    template = require_alfworld().goal_library.gdict[pairing.task_type]["pddl"]
    return template.format(obj=pairing.obj, recep=pairing.partner, toggle=pairing.partner, mrecep="").replace("#", "-")


def sentence_templates(task_type: str) -> list[str]:
    return list(require_alfworld().goal_library.gdict[task_type]["templates"])


def task_sentence(pairing: Pairing, template: str) -> str:
    # Lower-case class names, as ALFWorld's own templating does ("put a cool apple in countertop").
    low = pairing.partner.lower()
    return template.format(obj=pairing.obj.lower(), recep=low, toggle=low, mrecep="")


def problem_text(spec: GameSpec) -> str:
    receptacles = spec.plan.receptacles
    object_kinds = sorted({o.kind for o in spec.objects} | set(DOMAIN_OBJECT_TYPES))
    receptacle_kinds = sorted({r.kind for r in receptacles} | set(DOMAIN_RECEPTACLE_TYPES))
    locations = sorted({r.location for r in receptacles} | {spec.start_location})
    lines = [f"(define (problem plan_{spec.split}_{spec.seed}_{spec.index})", "    (:domain alfred)",
             "    (:objects", "        agent1 - agent"]
    lines += [f"        {k}Type - otype" for k in object_kinds]
    lines += [f"        {k}Type - rtype" for k in receptacle_kinds]
    lines += [f"        {o.id} - object" for o in spec.objects]
    lines += [f"        {r.id} - receptacle" for r in receptacles]
    lines += [f"        {loc} - location" for loc in locations]
    lines += ["    )", "    (:init", f"        (atLocation agent1 {spec.start_location})"]
    for r in receptacles:
        lines += [f"        (receptacleType {r.id} {r.kind}Type)",
                  f"        (receptacleAtLocation {r.id} {r.location})"]
        if vocab.is_openable(r.kind):
            lines.append(f"        (openable {r.id})")
    for o in spec.objects:
        lines += [f"        (objectType {o.id} {o.kind}Type)", f"        (inReceptacle {o.id} {o.receptacle_id})",
                  f"        (objectAtLocation {o.id} {o.location})"]
        if o.portable:
            lines.append(f"        (pickupable {o.id})")
        if o.kind in vocab.LAMPS:
            lines.append(f"        (toggleable {o.id})")
        lines += [f"        ({fact} {o.id})" for fact, prop in OBJECT_PROPERTIES if vocab.has_property(o.kind, prop)]
    # canContain is mandatory: without it "move X to Y" is never admissible and the planner finds no plan.
    lines += [f"        (canContain {r}Type {o}Type)" for r in receptacle_kinds for o in object_kinds
              if vocab.can_contain(r, o)]
    lines.append("    )")
    return "\n".join(lines) + "\n" + goal_pddl(spec.pairing)


def game_json(spec: GameSpec) -> dict:
    domain, grammar = _domain_and_grammar()
    return {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", spec.sentence),
        "pddl_problem": problem_text(spec),
        "solvable": True,
        "walkthrough": list(spec.walkthrough),
    }


def traj_json(spec: GameSpec) -> dict:
    look = spec.pairing.is_look
    return {
        "task_type": spec.task_type,
        "pddl_params": {
            "object_target": spec.pairing.obj,
            "parent_target": "" if look else spec.pairing.partner,
            "toggle_target": spec.pairing.partner if look else "",
            "mrecep_target": "",
            "object_sliced": False,
        },
        "turk_annotations": {"anns": [{"task_desc": spec.sentence, "high_descs": [], "votes": []}]},
        "scene": {"floor_plan": f"FloorPlan{spec.plan.number}", "scene_num": spec.plan.number},
        "gflowvlm": {
            "split": spec.split, "seed": spec.seed, "index": spec.index, "room": spec.plan.room,
            "size_class": spec.plan.size_class, "layout": repr(spec.plan.signature()),
            "pairing": [spec.pairing.obj, spec.pairing.partner], "objects": len(spec.objects),
            "receptacles": len(spec.plan.receptacles),
        },
    }
