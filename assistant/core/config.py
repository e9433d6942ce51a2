"""Configs: YAML files in configs/ (or any path), one section per stage, read into each stage's dataclass."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

STAGES = ("backbone", "features", "attributes", "simulator", "retriever", "metrics")  # the order `train` runs
CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs"
T = TypeVar("T")


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
    """The config as a dict of sections."""
    data = yaml.safe_load(config_path(name_or_path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {name_or_path}: the top level must be a mapping of sections")
    return data


def section(config: dict[str, Any], name: str, kind: type[T]) -> T:
    """Build a stage's dataclass from its section; unknown keys are an error, missing keys take defaults."""
    values = config.get(name) or {}
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"config section {name!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return kind(**values)
