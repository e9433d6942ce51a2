"""Every subcommand end to end through the real `fashion-assistant` command, on the tests' tiny demo model."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

COMMAND = str(Path(sys.executable).with_name("fashion-assistant"))
CATALOG = "demo:300"


def run(*args: str, stdin: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([COMMAND, *args], input=stdin, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_index_builds_the_catalogs_features_and_index(demo_model_dir: Path) -> None:
    done = run("index", "--model", str(demo_model_dir), "--catalog", CATALOG)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("300 items: features and exact index ready")


def test_evaluate_writes_per_turn_metrics_and_a_plot(demo_model_dir: Path, tmp_path: Path) -> None:
    out, plot = tmp_path / "eval.json", tmp_path / "eval.png"
    done = run("evaluate", "--model", str(demo_model_dir), "--catalog", CATALOG, "--targets", "30", "--turns", "3",
               "--json", str(out), "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    systems = json.loads(out.read_text())["systems"]
    assert {"model", "keyword", "random"} <= set(systems)
    for metrics in systems.values():
        assert len(metrics["success@10"]) == 3 and all(0.0 <= v <= 1.0 for v in metrics["success@10"])
    # the model's dialog moves the target up; random over 300 items finds it at 10/300 a turn
    assert systems["model"]["success@10"][-1] > systems["random"]["success@10"][-1]
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_evaluate_simulator_reports_faithfulness(demo_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    done = run("evaluate-simulator", "--model", str(demo_model_dir), "--catalog", CATALOG, "--pairs", "40",
               "--decoding", "greedy", "--json", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["pairs"] == 40 and result["decoding"] == "greedy"
    for name in ("attribute_precision", "attribute_recall", "bleu_4", "distinct_2"):
        assert 0.0 <= result[name] <= 1.0
    assert len(result["examples"]) > 0 and all(isinstance(example, dict) for example in result["examples"])


def test_chat_on_stdin_then_export_dialogs(demo_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "dialogs"
    done = run("chat", "--model", str(demo_model_dir), "--catalog", CATALOG, "--data", str(data),
               stdin="a red dress for women\nmake it blue\npick 2\nquit\n")
    assert done.returncode == 0, done.stderr
    assert "Your pick:" in done.stdout
    out = tmp_path / "dialogs.jsonl"
    exported = run("export-dialogs", "--data", str(data), "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    dialogs = [line for line in lines if line["kind"] == "dialog"]
    assert len(dialogs) == 1 and len(dialogs[0]["turns"]) == 2
    assert [turn["text"] for turn in dialogs[0]["turns"]] == ["a red dress for women", "make it blue"]
    assert dialogs[0]["final_pick"] is not None


@pytest.mark.timeout(300)
def test_serve_starts_the_app_and_answers_on_its_port(demo_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen([COMMAND, "serve", "--model", str(demo_model_dir), "--catalog", CATALOG,
                               "--port", str(port), "--data", str(tmp_path / "dialogs")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.monotonic() + 240, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode()
                    break
            except OSError:
                time.sleep(1)
        assert server.poll() is None, server.stdout.read()
        assert page is not None and "Fashion assistant" in page
    finally:
        server.terminate()
        server.wait(timeout=30)
