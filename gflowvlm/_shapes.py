"""The tensor-shape text that the objectives' and flows' input checks put in their error messages."""
from __future__ import annotations

from torch import Tensor


def shape_text(tensor: Tensor) -> str:
    """`tensor`'s shape as "[2, 3]"."""
    return "[" + ", ".join(str(size) for size in tensor.shape) + "]"
