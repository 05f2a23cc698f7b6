"""Nested training state (optimizer, scheduler, RNG states) stored as safetensors + JSON, never pickle.

`torch.save` pickles, and unpickling a file from elsewhere can run code. Optimizer and RNG states are trees of dicts,
lists, tuples, numbers, strings, tensors and numpy arrays: tensors and arrays go into one safetensors file under
generated keys, the tree's skeleton (with references to those keys) into a JSON file.

Loading treats both files as untrusted: a torn or edited file is a StateFileError (one line), never a traceback
from deep inside safetensors or json, and nothing in them is ever executed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class StateFileError(ValueError):
    """A state file pair that cannot be read back (truncated, edited, or not written by save_state)."""


def save_state(state: Any, directory: str | Path, name: str) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    directory = Path(directory)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(skeleton), encoding="utf-8")


def load_state(directory: str | Path, name: str) -> Any:
    directory = Path(directory)
    try:
        tensors = load_file(str(directory / f"{name}.safetensors"))
        skeleton = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise StateFileError(f"{name}: {Path(error.filename or name).name} is missing") from None
    except (SafetensorError, ValueError, UnicodeDecodeError) as error:
        raise StateFileError(f"{name}: unreadable ({_first_line(error)})") from None
    try:
        state = _unflatten(skeleton, tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as error:
        raise StateFileError(f"{name}: malformed ({_first_line(error)})") from None
    return state


def _flatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": key}
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            raise TypeError("state dict keys must be str or int")
        return {"__dict__": [[k, _flatten(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_flatten(v, tensors) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        if isinstance(value, float) and not np.isfinite(value):
            return {"__float__": repr(value)}
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return _flatten(value.item(), tensors)
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[_tensor_key(value["__tensor__"], tensors)]
        if "__ndarray__" in value:
            return tensors[_tensor_key(value["__ndarray__"], tensors)].numpy()
        if "__tuple__" in value:
            return tuple(_unflatten(v, tensors) for v in _list(value["__tuple__"]))
        if "__float__" in value:
            if value["__float__"] not in ("inf", "-inf", "nan"):
                raise ValueError(f"bad non-finite float {value['__float__']!r}")
            return float(value["__float__"])
        if "__dict__" in value:
            items = _list(value["__dict__"])
            if not all(isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int)) for item in items):
                raise ValueError("a dict entry is not a [key, value] pair")
            return {k: _unflatten(v, tensors) for k, v in items}
        raise ValueError(f"malformed state entry with keys {sorted(value)}")
    return value


def _tensor_key(key: Any, tensors: dict[str, torch.Tensor]) -> str:
    if not isinstance(key, str) or key not in tensors:
        raise ValueError(f"reference to a tensor that is not in the file: {key!r}")
    return key


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return value


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
