"""Typed loading of nested dataclass configs from YAML plus `key.sub=value` overrides.

Why hand-written: the one thing needed is strict validation (unknown keys and wrong types are errors that name the
key path) of plain dataclasses, which neither PyYAML nor argparse does; pulling in Hydra/OmegaConf for that would add
a heavy dependency and its own override grammar.

Config files are small and written by hand, so the reader refuses anything that is not: files over
MAX_CONFIG_BYTES, and YAML whose aliases expand past MAX_YAML_NODES nodes or refer to themselves (a 520-byte
"billion laughs" file would otherwise expand to gigabytes once an error message prints it).
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

MAX_CONFIG_BYTES = 256 * 1024  # the largest shipped config is under 2 kB
MAX_YAML_NODES = 100_000  # nodes after expanding aliases; a real config has a few hundred
MAX_YAML_DEPTH = 64  # nested collections; a real config has 3 (PyYAML's scanner is quadratic in the depth)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed: the same YAML, parsed in C
MAX_BASE_DEPTH = 8  # `base:` chains deeper than this are a mistake, not a recipe
MAX_SHOWN = 80  # characters of a bad value quoted in an error message


class ConfigError(ValueError):
    """A config problem, reported to the user as one line naming the key path."""


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking keys and types recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((key for key in data if key not in fields), key=str)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown config key {where}{_show(unknown[0], repr_=False)} "
                          f"(known: {', '.join(sorted(fields))})")
    values = {name: coerce(hints[name], value, _join(path, name)) for name, value in data.items()}
    return cls(**values)


def coerce(hint: Any, value: Any, path: str) -> Any:
    """Check `value` against type `hint`, converting where YAML/command line cannot know the type (int -> float)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {_show(value)}")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{path}: {_show(value)} is not one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {_show(value)}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {_show(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {_show(value)}")
    raise ConfigError(f"{path}: unsupported config type {hint!r}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings (values parsed as YAML scalars/lists) onto a nested mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {_show(item)} is not of the form key.sub=value")
        try:
            value = parse_yaml(raw, f"override {key.strip()}") if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


# ----- reading YAML ------------------------------------------------------------------------------------------
def parse_yaml(text: str, source: str) -> Any:
    """yaml.safe_load, but a ConfigError for nesting deeper than MAX_YAML_DEPTH, aliases that expand past
    MAX_YAML_NODES and self-referencing aliases; other syntax errors stay yaml.YAMLError for the caller to word."""
    _check_depth(text, source)  # first, on the event stream: stops at the limit, before anything is composed
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_depth(text: str, source: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{source}: YAML nested more than {MAX_YAML_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Count the nodes `root` expands to, aliases included, in time linear in the DISTINCT nodes (memoised, so a
    billion-laughs file is refused after a few hundred steps instead of being expanded)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current depth-first path: meeting one again is a self-reference
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        children = _children(node)
        if finished:
            open_nodes.discard(id(node))
            sizes[id(node)] = size = 1 + sum(sizes[id(child)] for child in children)
            if size > MAX_YAML_NODES:
                raise ConfigError(f"{source}: YAML aliases expand to more than {MAX_YAML_NODES} values; "
                                  "write the config out without anchors (&) and aliases (*)")
            continue
        if id(node) in sizes:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise ConfigError(f"{source}: a YAML alias refers to itself (a recursive structure)")
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(path: str) -> dict:
    """One config file as a mapping (no `base:` resolution; see load_composed_yaml)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: {path}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB; "
                          "configs are small hand-written files")
    try:
        data = parse_yaml(raw.decode("utf-8"), f"config file {path}")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


# ----- composition: `base: PATH` -----------------------------------------------------------------------------
def load_composed_yaml(path: str | os.PathLike) -> dict:
    """A config file with its `base:` files merged under it, recursively (the `base` key removed).

    `base: PATH` or `base: [PATH, ...]` (applied in order; PATH relative to the file naming it) names files this
    one overrides: mappings merge key by key, lists and scalars replace, `key: null` sets null. Cycles and chains
    deeper than MAX_BASE_DEPTH are ConfigErrors.
    """
    return _compose(Path(path), [])


def _compose(path: Path, chain: list[Path]) -> dict:
    resolved = path.resolve()
    names = [str(step) for step in chain]
    if resolved in [step.resolve() for step in chain]:
        raise ConfigError(f"config base cycle: {' -> '.join(names + [str(path)])}")
    if len(chain) > MAX_BASE_DEPTH:
        raise ConfigError(f"config bases nest deeper than {MAX_BASE_DEPTH} levels: {' -> '.join(names)} -> ...")
    try:
        data = load_yaml(str(path))
    except ConfigError as error:
        if chain and str(error).startswith("config file not found"):
            raise ConfigError(f"{error} (the base of {chain[-1]})") from None
        raise
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b.strip() for b in bases):
        raise ConfigError(f"{path}: base must be a path or a list of paths, got {_show(bases)}")
    merged: dict = {}
    for base in bases:
        base_path = Path(os.path.expanduser(base))
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        merged = deep_merge(merged, _compose(base_path, chain + [path]))
    return deep_merge(merged, data)


def deep_merge(base: dict, override: dict) -> dict:
    """`override` over `base`: mappings merge key by key; anything else (lists, scalars, null) replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ----- output paths, checked before anything runs ------------------------------------------------------------
def check_output_dir(path: str, key: str) -> None:
    """`path` can be created (or reused) as a directory: neither it nor an existing parent is a file."""
    if not str(path).strip():
        raise ConfigError(f"{key} must not be empty")
    target = Path(os.path.expanduser(path))
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{key}: {path} is a file, not a directory")
    _check_parents(target, path, key)


def check_output_file(path: str, key: str) -> None:
    """`path` can be written as a file: it is not a directory and no existing parent is a file."""
    if not str(path).strip():
        raise ConfigError(f"{key} must not be empty")
    target = Path(os.path.expanduser(path))
    if target.is_dir():
        raise ConfigError(f"{key}: {path} is a directory, not a file")
    _check_parents(target, path, key)


def _check_parents(target: Path, shown: str, key: str) -> None:
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{key}: {parent} is a file, so {shown} cannot be created under it")
            return


def _show(value: Any, repr_: bool = True) -> str:
    """A bad value for an error message, cut short: the message stays one readable line whatever was given."""
    text = repr(value) if repr_ else str(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
