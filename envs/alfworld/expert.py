"""Chain-of-thought text for the planner expert's next command (SFT data).

The thought says what the task asks, which of its goal conditions already hold, why the next command serves
the rest of the planner's plan, and how many steps remain. It is built from the plan and the engine's facts
only, so it is deterministic and always agrees with `expert_action()`.
"""
from __future__ import annotations

import re

from envs.alfworld.goal_conditions import CONDITION_NAMES

_PATTERNS = (
    ("go", re.compile(r"^go to (?P<r>.+)$")),
    ("take", re.compile(r"^take (?P<o>.+) from (?P<r>.+)$")),
    ("change", re.compile(r"^(?P<verb>heat|cool|clean) (?P<o>.+) with (?P<r>.+)$")),
    ("move", re.compile(r"^move (?P<o>.+) to (?P<r>.+)$")),
    ("open", re.compile(r"^open (?P<r>.+)$")),
    ("use", re.compile(r"^use (?P<o>.+)$")),
)
_PAST = {"heat": "heated", "cool": "cooled", "clean": "cleaned"}


def _parse(command: str) -> tuple[str, dict[str, str]]:
    for kind, pattern in _PATTERNS:
        match = pattern.match(command)
        if match:
            return kind, match.groupdict()
    return "other", {}


def _why(command: str, following: str | None, obj_class: str) -> str:
    kind, parts = _parse(command)
    next_kind, next_parts = _parse(following) if following else ("none", {})
    if kind == "go":
        where = parts["r"]
        if next_kind == "take":
            return f"The {next_parts['o']} should be at the {where}, so I go there to take it."
        if next_kind == "open":
            return f"I go to the {where}; it is closed, so I will open it next."
        if next_kind == "change":
            return f"I go to the {where} to {next_parts['verb']} the {next_parts['o']} with it."
        if next_kind == "move":
            return f"I go to the {where} to put the {next_parts['o']} there."
        if next_kind == "use":
            return f"I go to the {where}, where the {next_parts['o']} stands."
        return f"I go to the {where}."
    if kind == "open":
        purpose = f"take the {next_parts['o']}" if next_kind == "take" else (
            f"put the {next_parts['o']} in it" if next_kind == "move" else "see inside")
        return f"The {parts['r']} is closed; I open it to {purpose}."
    if kind == "take":
        return f"The {parts['o']} is here on the {parts['r']}; I take it."
    if kind == "change":
        return (f"The task needs the {obj_class} {_PAST[parts['verb']]}, so I {parts['verb']} the {parts['o']} "
                f"with the {parts['r']}.")
    if kind == "move":
        return f"I put the {parts['o']} in the {parts['r']}, as the task asks."
    if kind == "use":
        return f"I turn on the {parts['o']} to look at the {obj_class} under its light."
    return f"I {command}."


def thoughts(task: str, task_type: str, obj_class: str, flags: tuple[bool, ...], plan: list[str]) -> str:
    """The expert's reasoning for plan[0] (the next command) given the task and its condition flags."""
    if not plan:
        return f"The task is to {task.rstrip('.')}. It is already done, so I only look around.\nNext action: look"
    names = CONDITION_NAMES[task_type]
    done = [name for name, holds in zip(names, flags) if holds]
    status = ("Done so far: " + ", ".join(done) + ".") if done else "Nothing of it is done yet."
    following = plan[1] if len(plan) > 1 else None
    steps = f"{len(plan)} step{'s' if len(plan) != 1 else ''} of my plan remain."
    return (f"The task is to {task.rstrip('.')}. {status} {_why(plan[0], following, obj_class)} {steps}\n"
            f"Next action: {plan[0]}")
