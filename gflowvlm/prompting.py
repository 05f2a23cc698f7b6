"""The non-Markovian prompt of GFlowVLM: task, past states and actions, admissible actions, current image.

Layout of `Prompt.text` (the user message; the policy wraps it in the model's chat template with the image):

    Task: <goal>
    History:                                   (only with config.history and at least one past step)
    Step 1: <state text>. You chose: <action>  (newest last; numbered by their step in the episode)
    Actions: <admissible commands, comma separated>
    The image shows the current state.
    Current state: <state text>                (only for envs that read the state as text, e.g. ALFWorld)
    Respond with a valid JSON object with fields "thoughts", "action" (...).

Only the current image travels with the prompt (`Prompt.image`); past states appear as text. The card games
leave the current state text out on purpose: the model has to read it off the image (as in RL4VLM and
GFlowVLM); ALFWorld, and any env not in `ENV_FORMATS`, gets it because the paper gives ALFWorld a description.

Each env's response format (the fields restated before "thoughts") is a row of `ENV_FORMATS`; an env id missing
from the table gets the generic format ("thoughts", then "action" chosen from the admissible actions), so a
user's own env works without changes here. The wording is short and regular on purpose: the tiny CPU model has
a small BPE vocabulary trained on exactly this text, and NumberLine with 10 history steps stays near 250 tokens.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from gflowvlm.config import PromptConfig, check_fields


@dataclass(frozen=True)
class Prompt:
    text: str  # the user message WITHOUT any chat template: task, history, admissible actions, format
    image: np.ndarray  # the CURRENT observation image only, uint8 H x W x 3


@dataclass(frozen=True)
class HistoryStep:
    state_text: str  # obs["text"] of a past state
    action: str  # the command the agent sent in that state (or "(invalid)" when nothing parsed)


@dataclass(frozen=True)
class EnvFormat:
    fields: tuple[str, ...]  # response fields before "thoughts", in this order
    action_hint: str  # what "action" holds, shown in brackets after it
    include_state_text: bool  # put the current state's text in the prompt (else the image alone shows it)


_FROM_ACTIONS = "one of the actions above"
GENERIC_FORMAT = EnvFormat(fields=(), action_hint=_FROM_ACTIONS, include_state_text=True)
ENV_FORMATS: dict[str, EnvFormat] = {
    "gflowvlm/NumberLine-v0": EnvFormat(("current number", "target number"), '"+" or "-"', False),
    "gflowvlm/Blackjack-v0": EnvFormat((), '"stand" or "hit"', False),
    "gflowvlm/EZPoints-v0": EnvFormat(("cards", "current formula"), _FROM_ACTIONS, False),
    "gflowvlm/Points24-v0": EnvFormat(("cards", "current formula"), _FROM_ACTIONS, False),
    "gflowvlm/ALFWorld-v0": EnvFormat((), _FROM_ACTIONS, True),
    "gflowvlm/FrozenLake-v0": EnvFormat((), _FROM_ACTIONS, False),
}
_RESERVED_FIELDS = ("thoughts", "action")


def check_prompt_config(config: PromptConfig) -> None:
    """The prompt settings' ranges (config.FIELD_BOUNDS; a ConfigError, which is a ValueError). Config validation
    runs the same check before any model loads; commands that build prompts without a run config call this."""
    check_fields(config, "prompt.")


def env_format(env_id: str) -> EnvFormat:
    """The response format of `env_id`; the generic one for ids not in `ENV_FORMATS`."""
    return ENV_FORMATS.get(env_id, GENERIC_FORMAT)


class PromptBuilder:
    """Builds the prompt of one env and writes responses in its format (module docstring)."""

    def __init__(self, env_id: str, config: PromptConfig, count_tokens: Callable[[str], int] | None = None):
        if not isinstance(env_id, str) or not env_id:
            raise ValueError(f"env_id must be a non-empty string, got {env_id!r}")
        check_prompt_config(config)
        self.env_id = env_id
        self.config = config
        self.count_tokens = count_tokens
        self.format = env_format(env_id)
        self._format_line = self._format_instruction()

    def build(self, task: str, history: Sequence[HistoryStep], admissible: Sequence[str], image: np.ndarray,
              state_text: str | None = None) -> Prompt:
        """The prompt for the current state; the oldest history goes first when the token budget is exceeded."""
        if not isinstance(task, str):
            raise ValueError(f"task must be a string, got {type(task).__name__}")
        _check_image(image)
        for step in history:
            if not isinstance(step, HistoryStep):
                raise ValueError(f"history items must be HistoryStep, got {type(step).__name__}")
        numbered = list(enumerate(history, start=1))
        if not self.config.history or self.config.max_history_steps == 0:
            numbered = []
        else:
            numbered = numbered[-self.config.max_history_steps:]
        text = self._text(task, numbered, admissible, state_text)
        if self.count_tokens is not None:
            while numbered and self.count_tokens(text) > self.config.max_prompt_tokens:
                numbered = numbered[1:]
                text = self._text(task, numbered, admissible, state_text)
        return Prompt(text=text, image=image)

    def response(self, thoughts: str, action: str, fields: Mapping[str, Any]) -> str:
        """The JSON response text in this env's format (fields first, then "thoughts", then "action")."""
        for name in fields:
            if not isinstance(name, str):
                raise ValueError(f"response field names must be strings, got {name!r}")
            if name in _RESERVED_FIELDS:
                raise ValueError(f"response field {name!r} is reserved (it is written from the arguments)")
        ordered: dict[str, Any] = {name: fields[name] for name in self.format.fields if name in fields}
        ordered.update((name, value) for name, value in fields.items() if name not in ordered)
        ordered["thoughts"] = thoughts
        ordered["action"] = action
        return json.dumps(ordered, ensure_ascii=False)

    # ----- text assembly ---------------------------------------------------------------------------------
    def _text(self, task: str, numbered: Sequence[tuple[int, HistoryStep]], admissible: Sequence[str],
              state_text: str | None) -> str:
        lines = [f"Task: {_one_line(task)}"]
        if numbered:
            lines.append("History:")
            lines.extend(f"Step {index}: {_sentence(step.state_text)} You chose: {_one_line(step.action)}"
                         for index, step in numbered)
        lines.append(f"Actions: {_action_list(admissible)}")
        lines.append("The image shows the current state.")
        if self.format.include_state_text and state_text:
            lines.append(f"Current state: {_one_line(state_text)}")
        lines.append(self._format_line)
        return "\n".join(lines)

    def _format_instruction(self) -> str:
        names = _field_list((*self.format.fields, "thoughts"))
        return f'Respond with a valid JSON object with fields {names}, "action" ({self.format.action_hint}).'


def reading_instruction(names: Sequence[str]) -> str:
    """The prompt of a reading record (sft_data, caption source "fields"): the task prompt's last two lines, asking
    for the state fields alone, so that the reply's opening ({"current number": 44, ...}) is trained on any state
    without showing an action."""
    return f"The image shows the current state.\nRespond with a valid JSON object with fields {_field_list(names)}."


def _field_list(names: Sequence[str]) -> str:
    return ", ".join(json.dumps(name, ensure_ascii=False) for name in names)


def _one_line(text: str) -> str:
    # Env texts (ALFWorld's above all) contain newlines; the prompt keeps one line per item.
    return " ".join(str(text).split())


def _sentence(text: str) -> str:
    line = _one_line(text)
    return line if not line or line[-1] in ".!?" else line + "."


def _action_list(admissible: Sequence[str]) -> str:
    commands = [_one_line(command) for command in admissible]
    if not commands:
        return "none"
    if any("," in command for command in commands):
        # A comma inside a command would make the plain list ambiguous: quote every command.
        return ", ".join(json.dumps(command, ensure_ascii=False) for command in commands)
    return ", ".join(commands)


def _check_image(image: Any) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        described = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                     else type(image).__name__)
        raise ValueError(f"image must be a uint8 H x W x 3 array, got {described}")
