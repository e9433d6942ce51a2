"""Every shipped configs/*.yaml loads and validates through PipelineConfig, and a typo in one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from assistant.core.config import CONFIG_DIR, load_config
from assistant.model_dir import PipelineConfig

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_shipped_configs_are_the_documented_three() -> None:
    assert [path.stem for path in SHIPPED] == ["demo", "fpi-cpu", "gpu"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_a_shipped_config_loads_and_every_key_it_sets_is_kept(path: Path) -> None:
    config = PipelineConfig.load(path.stem)
    assert PipelineConfig.load(path) == config
    resolved = config.as_dict()
    for name, values in load_config(path).items():
        for key, value in (values or {}).items():
            assert resolved[name][key] == value, (path.name, name, key)
    assert PipelineConfig.from_dict(resolved) == config  # what a model directory's config.yaml holds reads back


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_a_typo_in_a_shipped_config_is_refused(path: Path, tmp_path: Path) -> None:
    raw = load_config(path)
    raw.setdefault("retriever", {})["widht"] = 64
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ValueError, match="widht"):
        PipelineConfig.load(typo)
