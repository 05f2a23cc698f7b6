"""Reading the action out of a model's response, without ever trusting or evaluating it.

The policy is asked for a JSON object such as `{"thoughts": "...", "action": "+"}`. Models (tiny ones above all)
also write text around it, a second object, Python dict syntax, a missing closing quote or brace. Two functions:

`action_span(output) -> (start, end) | None`
    Character offsets `[start, end)` of the action VALUE in the original string: inside the quotes for a string
    value, the token itself for a number or bare word. The policy uses it to tell action tokens from
    chain-of-thought tokens. None means the output has no action field at all. An empty value gives an empty span.

`parse_action(output, admissible) -> str | None`
    The admissible command (the element of `admissible`, as given) the action value names, or None when there is
    no action field or the value names no admissible command unambiguously. None never means "pick something":
    the caller applies the configured fallback (a random admissible action, or an illegal step).

Both read the same action field, found as follows (only the first 64 KiB of the output are read):

1. JSON: the first complete top-level JSON object (tried from each "{", at most 64 tries, so the work is
   bounded) that has an "action" key (case-insensitive, surrounding spaces ignored; with duplicates the last
   one, as `json` keeps it). Its value: a string as is; a number as text (`10.0` -> "10"); true/false/null as
   their JSON text; an array or object names no command (parse_action gives None; the span covers it).
2. Otherwise a tolerant scan in the spirit of RL4VLM's parser ("the text after `"action":`"): the first key
   `"action"`, `'action'` or a bare `action` (a bare key only at the start of a line or after "{" or ",") that is
   followed by ":" and is not inside a quoted string (so thoughts that mention "action" do not count). Its value:
   a double- or single-quoted string up to its closing quote; with no closing quote before the line ends, up to
   the first newline or "}" (trailing spaces dropped); an unquoted value up to the first `,` `}` `"` or newline.

Matching the value against the admissible commands (both sides: lower-case, inner whitespace collapsed,
surrounding whitespace and quotes removed):

1. exact match;
2. exact match after also stripping surrounding punctuation `. , ; : ! ? [ ] < >` from both sides (so
   "stand." -> "stand"); commands that become empty or collide after stripping are skipped;
3. only when neither matched, the RL4VLM substring rule, made strict: the commands that contain a letter or digit
   and occur in the value as whole words (a command edge that is a letter or digit must not touch another
   letter or digit, so "1" is not found in "10" and "go to countertop 1" is not found in "go to countertop 10").
   A found command that lies inside another found command is dropped (the longest, containing match wins: were
   both "go to desk 1" and "desk 1" admissible, "i go to desk 1" reads as "go to desk 1"); exactly one remaining
   command is the result, none or several give None. Punctuation-only commands such as
   "+" or "(" are only accepted by rules 1-2, so "3+4" never reads as "+". The rule looks at values of at most
   1,024 characters (a real command is short).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

MAX_OUTPUT_CHARS = 64 * 1024
MAX_JSON_TRIES = 64
MAX_SUBSTRING_VALUE_CHARS = 1024

_JSON_WHITESPACE = " \t\n\r"
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
_EDGE_PUNCTUATION = ".,;:!?[]<>"
_DECODER = json.JSONDecoder()
# Tokens of the tolerant scan. The unrolled string patterns are linear (no nested alternatives to backtrack).
_DOUBLE_QUOTED = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_SINGLE_QUOTED = re.compile(r"'[^'\\]*(?:\\.[^'\\]*)*'?", re.DOTALL)
_WHITESPACE = re.compile(r"\s+")
_BARE_WORD = re.compile(r"[^\s\"'{}\[\],:]+")
_STRUCTURAL = "{}[],:"
# Where a quoted (Python dict) single-quoted string may start; elsewhere "'" is an apostrophe.
_SINGLE_QUOTE_STARTS = (None, "{", "[", ",", ":")
_UNQUOTED_VALUE_END = re.compile(r"[,}\"\n]")


@dataclass(frozen=True)
class _ActionField:
    value: str | None  # None: a value that names no command (array, object)
    start: int
    end: int


def action_span(output: Any) -> tuple[int, int] | None:
    """`[start, end)` of the action value in `output`, or None when there is no action field (module docstring)."""
    field = _find_action_field(output)
    return None if field is None else (field.start, field.end)


def parse_action(output: Any, admissible: Sequence[str]) -> str | None:
    """The admissible command the output's action names, or None (module docstring). Never raises."""
    try:
        field = _find_action_field(output)
        if field is None or field.value is None:
            return None
        return match_command(field.value, admissible)
    except Exception:  # noqa: BLE001 - model output must never crash a rollout; None = "nothing parsed"
        return None


def match_command(value: Any, admissible: Sequence[str]) -> str | None:
    """The element of `admissible` that `value` names under the matching rules, or None."""
    if not isinstance(value, str):
        return None
    commands = _text_commands(admissible)
    if not commands:
        return None
    wanted = _normalise(value)
    for command in commands:
        if _normalise(command) == wanted:
            return command
    stripped_wanted = _strip_edges(wanted)
    if stripped_wanted:
        by_stripped: dict[str, list[str]] = {}
        for command in commands:
            key = _strip_edges(_normalise(command))
            if key and command not in by_stripped.setdefault(key, []):
                by_stripped[key].append(command)
        candidates = by_stripped.get(stripped_wanted, [])
        if len({_normalise(c) for c in candidates}) == 1:
            return candidates[0]
    return _unique_whole_word_match(wanted, commands)


# ----- finding the action field -----------------------------------------------------------------------------
def _find_action_field(output: Any) -> _ActionField | None:
    text = _as_text(output)
    if text is None:
        return None
    try:
        return _from_json(text) or _from_tolerant_scan(text)
    except Exception:  # noqa: BLE001 - malformed input of any kind means "no action field"
        return None


def _as_text(output: Any) -> str | None:
    if isinstance(output, (bytes, bytearray)):
        return bytes(output[:MAX_OUTPUT_CHARS * 4]).decode("utf-8", errors="replace")[:MAX_OUTPUT_CHARS]
    if isinstance(output, str):
        return output[:MAX_OUTPUT_CHARS]
    return None


def _from_json(text: str) -> _ActionField | None:
    position = text.find("{")
    tries = 0
    while position != -1 and tries < MAX_JSON_TRIES:
        tries += 1
        try:
            parsed, end = _DECODER.raw_decode(text, position)
        except (ValueError, RecursionError):
            position = text.find("{", position + 1)
            continue
        if isinstance(parsed, dict):
            field = _action_in_object(text, position)
            if field is not None:
                return field
        # A complete object without an action key: its nested objects are not top-level, skip past it.
        position = text.find("{", end)
    return None


def _action_in_object(text: str, start: int) -> _ActionField | None:
    """Walk the top-level members of the valid JSON object at `start`; the last action-like key wins."""
    found: _ActionField | None = None
    position = _skip_json_whitespace(text, start + 1)
    if text[position] == "}":
        return None
    while True:
        key, position = json.decoder.scanstring(text, position + 1)
        position = _skip_json_whitespace(text, position)
        position = _skip_json_whitespace(text, position + 1)  # past ":"
        value_start = position
        value, position = _DECODER.raw_decode(text, value_start)
        if key.strip().lower() == "action":
            found = _json_value_field(value, value_start, position)
        position = _skip_json_whitespace(text, position)
        if text[position] == "}":
            return found
        position = _skip_json_whitespace(text, position + 1)  # past ","


def _json_value_field(value: Any, start: int, end: int) -> _ActionField:
    if isinstance(value, str):
        return _ActionField(value, start + 1, end - 1)
    if isinstance(value, bool) or value is None:
        return _ActionField(json.dumps(value), start, end)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
            return _ActionField(str(int(value)), start, end)
        return _ActionField(str(value), start, end)
    return _ActionField(None, start, end)


def _skip_json_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in _JSON_WHITESPACE:
        position += 1
    return position


def _from_tolerant_scan(text: str) -> _ActionField | None:
    """The first `action` key outside quoted strings, with its value (module docstring, step 2)."""
    # Each token: (kind, start, end, line_start). kind: "string", "word" or the structural character.
    previous: tuple[str, int, int, bool] | None = None
    before_previous: tuple[str, int, int, bool] | None = None
    at_line_start = True
    position = 0
    length = len(text)
    while position < length:
        char = text[position]
        if char.isspace():
            end = _WHITESPACE.match(text, position).end()
            at_line_start = at_line_start or "\n" in text[position:end]
            position = end
            continue
        previous_kind = previous[0] if previous else None
        if char == '"' or (char == "'" and previous_kind in _SINGLE_QUOTE_STARTS):
            pattern = _DOUBLE_QUOTED if char == '"' else _SINGLE_QUOTED
            token = ("string", position, pattern.match(text, position).end(), at_line_start)
        elif char in _STRUCTURAL:
            if char == ":" and previous is not None and _is_action_key(text, previous, before_previous):
                return _value_after_colon(text, position + 1)
            token = (char, position, position + 1, at_line_start)
        else:
            match = _BARE_WORD.match(text, position)
            end = match.end() if match else position + 1  # a lone apostrophe
            token = ("word", position, end, at_line_start)
        before_previous, previous = previous, token
        at_line_start = False
        position = token[2]
    return None


def _is_action_key(text: str, token: tuple[str, int, int, bool],
                   before: tuple[str, int, int, bool] | None) -> bool:
    kind, start, end, line_start = token
    if kind == "string":
        raw = text[start + 1:end - 1] if end - start >= 2 and text[end - 1] == text[start] else text[start + 1:end]
        return raw.strip().lower() == "action"
    if kind == "word":
        structural_start = line_start or before is None or before[0] in ("{", ",")
        return structural_start and text[start:end].lower() == "action"
    return False


def _value_after_colon(text: str, position: int) -> _ActionField:
    spaces = _WHITESPACE.match(text, position)
    position = spaces.end() if spaces else position
    if position < len(text) and text[position] in "\"'":
        quote = text[position]
        start = position + 1
        pattern = _DOUBLE_QUOTED if quote == '"' else _SINGLE_QUOTED
        end = pattern.match(text, position).end()
        closed = end - position >= 2 and text[end - 1] == quote
        raw = text[start:end - 1] if closed else text[start:end]
        if closed and "\n" not in raw:
            return _ActionField(_unescape(raw, quote), start, end - 1)
        # No closing quote on this line: the value stops at the line end or a closing brace.
        stop = re.search(r"[\n}]", raw)
        raw = raw[:stop.start()] if stop else raw
        raw = raw.rstrip()
        return _ActionField(_unescape(raw, quote), start, start + len(raw))
    stop = _UNQUOTED_VALUE_END.search(text, position)
    end = stop.start() if stop else len(text)
    raw = text[position:end].rstrip()
    return _ActionField(raw, position, position + len(raw))


def _unescape(raw: str, quote: str) -> str:
    if "\\" not in raw:
        return raw
    if quote == "'":
        raw = raw.replace("\\'", "'").replace('"', '\\"')
    try:
        decoded = json.loads(f'"{raw}"')
    except ValueError:
        return raw
    return decoded if isinstance(decoded, str) else raw


# ----- matching ------------------------------------------------------------------------------------------
def _text_commands(admissible: Any) -> list[str]:
    if isinstance(admissible, (str, bytes)) or admissible is None:
        return []
    try:
        return [command for command in admissible if isinstance(command, str)]
    except TypeError:
        return []


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(_QUOTES).strip()


def _strip_edges(text: str) -> str:
    previous = None
    while previous != text:
        previous = text
        text = text.strip(_EDGE_PUNCTUATION + _QUOTES).strip()
    return text


def _unique_whole_word_match(value: str, commands: Sequence[str]) -> str | None:
    if len(value) > MAX_SUBSTRING_VALUE_CHARS:
        return None
    found: dict[str, str] = {}  # normalised command -> first admissible spelling
    for command in commands:
        key = _normalise(command)
        if key and key not in found and any(c.isalnum() for c in key) and _occurs_as_whole_words(key, value):
            found[key] = command
    outermost = [key for key in found if not any(key != other and key in other for other in found)]
    return found[outermost[0]] if len(outermost) == 1 else None


def _occurs_as_whole_words(needle: str, haystack: str) -> bool:
    start = haystack.find(needle)
    while start != -1:
        end = start + len(needle)
        left_ok = not needle[0].isalnum() or start == 0 or not haystack[start - 1].isalnum()
        right_ok = not needle[-1].isalnum() or end == len(haystack) or not haystack[end].isalnum()
        if left_ok and right_ok:
            return True
        start = haystack.find(needle, start + 1)
    return False
