"""Every expected failure of the real `fashion-assistant` command is one line on stderr and exit status 2."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from assistant import cli

REPO = Path(__file__).resolve().parent.parent
COMMAND = Path(sys.executable).parent / "fashion-assistant"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(COMMAND), *args], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


def one_error_line(result: subprocess.CompletedProcess, command: str) -> str:
    """The single stderr line of a failed run (exit 2, no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"fashion-assistant {command}: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def broken_model(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny trained model with backbone.safetensors cut to half its size."""
    copy = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(demo_model_dir, copy)
    weights = copy / "backbone.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return copy


def test_an_empty_catalog(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "styles.csv").write_text("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,"
                                         "usage,productDisplayName\n", encoding="utf-8")
    assert "no usable items" in one_error_line(run_cli("catalog", str(tmp_path)), "catalog")


def test_a_one_item_catalog_cannot_be_served(tmp_path: Path, demo_model_dir: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 40), (200, 0, 0)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "catalog.jsonl").write_text('{"id": "a", "title": "Red dress"}\n', encoding="utf-8")
    line = one_error_line(run_cli("serve", "--model", str(demo_model_dir), "--catalog", str(tmp_path),
                                  "--port", str(_free_port())), "serve")
    assert "1 usable item(s)" in line and "needs at least" in line


def test_a_truncated_backbone_names_the_file_and_debug_shows_the_traceback(broken_model: Path) -> None:
    args = ("index", "--model", str(broken_model), "--catalog", "demo:300")
    line = one_error_line(run_cli(*args), "index")
    assert "backbone.safetensors" in line and "damaged" in line
    debug = run_cli("--debug", *args)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "BackboneError" in debug.stderr


@pytest.mark.parametrize(("content", "expected"), [
    (b"backbone: {epochs: 2\nretriever: [", "not valid YAML at line"),
    (b"backbone: [1, 2]\n", "section 'backbone' must be a mapping of keys, not list"),
    (b"backbone:\n  model: caf\xe9\n", "not UTF-8 text"),
])
def test_a_bad_config_names_the_file(tmp_path: Path, content: bytes, expected: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    line = one_error_line(run_cli("train", "--config", str(config), "--out", str(tmp_path / "out")), "train")
    assert str(config) in line and expected in line
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_port_in_use(demo_model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error_line(run_cli("serve", "--model", str(demo_model_dir), "--catalog", "demo:300",
                                      "--port", str(port)), "serve")
    assert f"127.0.0.1:{port}" in line and "--port" in line


def test_an_unexpected_error_keeps_its_traceback_and_asks_for_a_bug_report(monkeypatch, capsys) -> None:
    def broken(*_: object, **__: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "load_catalog", broken)
    assert cli.main(["catalog", "demo"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "please report it" in err


def test_a_missing_optional_dependency_is_one_line() -> None:
    missing = ModuleNotFoundError("No module named 'psycopg'", name="psycopg")
    assert cli.error_line(missing) == "missing dependency 'psycopg': install it (pip install psycopg) and retry"
    assert cli.error_line(ModuleNotFoundError("no", name="assistant.nowhere")) is None  # our own: a bug
