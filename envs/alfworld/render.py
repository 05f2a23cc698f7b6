"""The image observation: a drawing of the engine's state for the VLM.

The visual ALFWorld shows AI2-THOR frames, which need a Unity download and a display; neither exists here. This
drawing stands in for them, rendered only from the PDDL engine's facts, deterministic and legible at 300 px:

- top: the task sentence;
- middle: the room as a board of its receptacles (coloured by kind, closed ones shaded, open ones marked,
  a lit lamp as a yellow dot), the agent's receptacle outlined in red;
- bottom: where the agent is, what it sees there (the contents of an open or open-top receptacle) and
  what it holds, with the states the engine knows (hot, cold, clean).

Only what the agent can currently observe is shown, as in the text observation. A THOR backend would replace
`draw_scene` by a frame grab; `SceneView` is the whole interface between the env and the drawing.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from envs.render import canvas, fit_font, font, to_array

FAMILY_COLORS = {
    "appliance": (190, 215, 240), "storage": (235, 215, 180), "surface": (200, 230, 195),
    "seat": (220, 205, 235), "holder": (220, 220, 220),
}
FAMILIES = {
    "appliance": {"fridge", "microwave", "sinkbasin", "bathtubbasin", "stoveburner", "coffeemachine", "toaster"},
    "storage": {"cabinet", "drawer", "shelf", "dresser", "safe", "cart", "garbagecan", "laundryhamper", "box"},
    "surface": {"countertop", "diningtable", "coffeetable", "sidetable", "desk", "tvstand"},
    "seat": {"sofa", "armchair", "bed", "ottoman", "toilet"},
}
AGENT_COLOR = (210, 30, 30)
STATUS_SHARE = 0.4      # the status text's most of the image height
MIN_TEXT_SIZE = 6       # the smallest status font (pixels); below it the bundled font is unreadable
LINE_SPACING = 1.25
INK = (20, 20, 20)


@dataclass(frozen=True)
class ReceptacleView:
    name: str               # "cabinet 3"
    openable: bool
    opened: bool
    lamp_on: bool = False


@dataclass
class SceneView:
    """What the drawing shows; built by the env from the engine's facts."""
    task: str
    receptacles: list[ReceptacleView]
    agent_at: str | None                       # receptacle name, or None in the middle of the room
    visible: list[str] | None = None           # contents at the agent's receptacle; None when it is closed
    holding: list[str] = field(default_factory=list)   # "apple 1 (hot)"


def natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _family_color(name: str, shaded: bool) -> tuple[int, int, int]:
    kind = name.rsplit(" ", 1)[0]
    family = next((f for f, kinds in FAMILIES.items() if kind in kinds), "holder")
    color = FAMILY_COLORS[family]
    return tuple(int(c * 0.72) for c in color) if shaded else color


_MEASURE = canvas(8)[1]


@lru_cache(maxsize=4096)
def _label_font_size(text: str, width: int, height: int) -> int:
    # Fitting a font is a binary search over sizes; the board's labels repeat every frame, so remember them.
    return fit_font(_MEASURE, text, width, height).size


def _wrapped(draw: ImageDraw.ImageDraw, text: str, width: int, size: int) -> list[str]:
    words, lines, line = text.split(" "), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font(size)) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line] if line else lines


def _board_font_size(view: SceneView, tile_w: int, tile_h: int) -> int:
    # One size for every tile (the longest label decides), so no receptacle looks more important than another.
    labels = {r.name.rpartition(" ")[0] for r in view.receptacles} | {"8 closed"}
    return min(_label_font_size(text, int(tile_w * 0.86), int(tile_h * 0.36)) for text in labels)


@lru_cache(maxsize=8192)
def _tile(name: str, openable: bool, opened: bool, lamp_on: bool, here: bool, width: int, height: int,
          size: int, border: int) -> Image.Image:
    # Tiles repeat from frame to frame; drawing text is the costly part of a frame, so tiles are cached.
    tile = Image.new("RGB", (width, height), _family_color(name, openable and not opened))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, width - 1, height - 1], outline=AGENT_COLOR if here else (90, 90, 90),
                   width=border if here else 1)
    kind, _, number = name.rpartition(" ")
    state = (" open" if opened else " closed") if openable else ""
    cx, cy = width / 2, height / 2
    draw.text((cx, cy - size * 0.1), kind, font=font(size), fill=INK, anchor="md")
    draw.text((cx, cy + size * 0.1), number + state, font=font(size), fill=INK, anchor="ma")
    if lamp_on:
        radius = max(3, size // 2)
        draw.ellipse([width - 2 * radius - 3, 2, width - 3, 2 + 2 * radius], fill=(250, 210, 0), outline=INK)
    return tile


def _draw_board(image: Image.Image, view: SceneView, left: int, top: int, width: int, height: int) -> None:
    n = max(1, len(view.receptacles))
    # Labels are wide: aim for cells about twice as wide as tall.
    cols = max(1, math.ceil(math.sqrt(n * width / height / 2.0)))
    rows = math.ceil(n / cols)
    cell_w, cell_h = width / cols, height / rows
    pad = max(1, int(min(cell_w, cell_h) * 0.05))
    tile_w, tile_h = max(4, int(cell_w - 2 * pad)), max(4, int(cell_h - 2 * pad))
    size = _board_font_size(view, tile_w, tile_h)
    for i, r in enumerate(view.receptacles):
        x0 = int(left + (i % cols) * cell_w + pad)
        y0 = int(top + (i // cols) * cell_h + pad)
        image.paste(_tile(r.name, r.openable, r.opened, r.lamp_on, r.name == view.agent_at, tile_w, tile_h, size,
                          max(2, pad + 1)), (x0, y0))


def _status_lines(draw: ImageDraw.ImageDraw, view: SceneView, width: int, text_size: int,
                  max_lines: int | None = None) -> list[str]:
    """The status paragraphs wrapped to `width`; with `max_lines`, in at most that many lines (at least one).

    A receptacle can hold dozens of objects, more than a small image has lines for, so under `max_lines` the
    "Sees" list gets the lines "At" and "Holds" leave it and ends in "+N more" when it is cut (at least one
    line, "Sees: +N more"); what still overflows (a one-line 32 px image) is cut at the last line that fits."""
    where = f"At: {view.agent_at}" if view.agent_at else "At: the middle of the room"
    holds = "Holds: " + (", ".join(view.holding) if view.holding else "nothing")
    where_lines, holds_lines = _wrapped(draw, where, width, text_size), _wrapped(draw, holds, width, text_size)
    if view.agent_at is None:
        sees = "Sees: the receptacles above"
    elif view.visible is None:
        sees = f"Sees: the {view.agent_at} is closed"
    else:
        sees = "Sees: " + (", ".join(view.visible) if view.visible else "nothing")
    sees_lines = _wrapped(draw, sees, width, text_size)
    if max_lines is None:
        return where_lines + sees_lines + holds_lines
    room = max(1, max_lines - len(where_lines) - len(holds_lines))
    if view.visible and len(sees_lines) > room:
        def cut(shown: int) -> list[str]:
            listed = view.visible[:shown] + [f"+{len(view.visible) - shown} more"]
            return _wrapped(draw, "Sees: " + ", ".join(listed), width, text_size)

        # The most objects whose list still fits (a binary search: a frame may see 50 objects, each try wraps).
        low, high = 0, len(view.visible) - 1
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if len(cut(middle)) <= room else (low, middle - 1)
        sees_lines = cut(low)
    return (where_lines + sees_lines + holds_lines)[:max(1, max_lines)]


def _status_height(lines: int, text_size: int, margin: int) -> int:
    return int(lines * text_size * LINE_SPACING + margin)


def _max_status_lines(size: int, margin: int, text_size: int) -> int:
    """Lines of `text_size` that fit in the status share of a `size` image (at least one)."""
    return max(1, int((size * STATUS_SHARE - margin) // (text_size * LINE_SPACING)))


def draw_scene(view: SceneView, size: int) -> np.ndarray:
    """The scene as a uint8 (size, size, 3) image."""
    image, draw = canvas(size, (248, 248, 244))
    margin = _margin(size)
    header_h = int(size * 0.11)
    draw.rectangle([0, 0, size, header_h], fill=(40, 60, 90))
    task_font = fit_font(draw, view.task, size - 2 * margin, header_h * 0.6)
    draw.text((size / 2, header_h / 2), view.task, font=task_font, fill=(255, 255, 255), anchor="mm")

    lines, text_size = status_layout(view, size)
    status_h = _status_height(len(lines), text_size, margin)
    top = size - status_h
    _draw_board(image, view, margin, header_h + margin, size - 2 * margin, top - header_h - 2 * margin)
    draw.rectangle([0, top, size, size], fill=(255, 255, 255), outline=(120, 120, 120))
    for k, line in enumerate(_drawn_lines(lines, top, margin, size, text_size)):
        draw.text((margin, top + margin // 2 + k * text_size * LINE_SPACING), line, font=font(text_size), fill=INK)
    return to_array(image)


def _margin(size: int) -> int:
    return max(2, size // 60)


def status_layout(view: SceneView, size: int) -> tuple[list[str], int]:
    """(the status lines, their font size) as a `size` image draws them.

    The status text gets the room it needs, shrinking the font to keep within 40% of the image; at the smallest
    font its lists are cut to what fits. (Without the cut, a long "Sees" list at the smallest font was taller
    than a small image, which left the board a negative height: math.sqrt raised in _draw_board.)"""
    margin = _margin(size)
    width = size - 2 * margin
    text_size = max(7, size // 22)
    lines = _status_lines(_MEASURE, view, width, text_size)
    while _status_height(len(lines), text_size, margin) > size * STATUS_SHARE and text_size > MIN_TEXT_SIZE:
        text_size -= 1
        lines = _status_lines(_MEASURE, view, width, text_size)
    if _status_height(len(lines), text_size, margin) > size * STATUS_SHARE:
        lines = _status_lines(_MEASURE, view, width, text_size, _max_status_lines(size, margin, text_size))
    return lines, text_size


def _drawn_lines(lines: list[str], top: int, margin: int, size: int, text_size: int) -> list[str]:
    """The lines whose glyphs fit inside the image (a last line that would spill over the bottom is left out)."""
    shown = 0
    while shown < len(lines) and top + margin // 2 + shown * text_size * LINE_SPACING + text_size <= size:
        shown += 1
    return lines[:shown]


def scene_caption(view: SceneView, size: int) -> str:
    """The status text a `size` image shows, in one line: where the agent is, what it sees, what it holds.

    Caption pre-training's target (`VLMEnv.image_caption`): the engine's text observation says more than the
    drawing (the arrival sentence, every object however long the list) and the board's tiles are a layout, not
    a sentence, so the caption is the drawn status lines, as wrapped and cut for this size. The task header is
    left out: it stays the same through an episode and every prompt states it in words."""
    lines, text_size = status_layout(view, size)
    margin = _margin(size)
    return " ".join(_drawn_lines(lines, size - _status_height(len(lines), text_size, margin), margin, size,
                                 text_size))
