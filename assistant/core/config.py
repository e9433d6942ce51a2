"""Configs: YAML files in configs/ (or any path), one section per stage, read into each stage's dataclass."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from assistant.core.errors import AssistantError

STAGES = ("backbone", "features", "attributes", "simulator", "retriever", "metrics")  # the order `train` runs
CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs"
T = TypeVar("T")


class ConfigError(AssistantError, ValueError):
    """A config file that cannot be read: not UTF-8, not YAML, or not a mapping of sections of keys."""


def config_path(name_or_path: str | Path) -> Path:
    """A config file: an existing path, or a name in configs/ (`demo`, `fpi-cpu`, `gpu`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.exists():
        return named
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"no config {name_or_path!r}: give a YAML path or one of {known}")


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """The config as a dict of sections; ConfigError names the file and what is wrong with it."""
    path = config_path(name_or_path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {error.start}); save it as UTF-8") from error
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{path}: not valid YAML{at} ({problem}); fix the file") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (backbone:, retriever:, ...)")
    for name, values in data.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{path}: section {name!r} must be a mapping of keys, not {type(values).__name__}")
    return data


def section(config: dict[str, Any], name: str, kind: type[T]) -> T:
    """Build a stage's dataclass from its section; unknown keys are an error, missing keys take defaults."""
    values = config.get(name) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"config section {name!r} must be a mapping of keys, not {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"config section {name!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return kind(**values)
