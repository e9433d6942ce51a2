"""Benchmark: 20 concurrent shoppers on the served app (loopback), each a 5-turn dialog: isolation and turn latency."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from gradio_client import Client

from assistant.core.catalog import SPLITS
from assistant.core.storage import atomic_write_text
from assistant.core.store import read_dialogs

REPO = Path(__file__).resolve().parent.parent
OPENINGS = ["a red dress", "black trousers", "a white shirt", "a blue skirt", "a green jacket", "a grey sweater",
            "navy shorts", "a pink t-shirt", "a floral dress", "a striped shirt"]
FEEDBACK = ["in blue", "with long sleeves", "shorter", "looser", "without a pattern", "in black", "slimmer",
            "with a v-neck"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def new_client(url: str) -> Client:
    """A client with its own session; thumbnails are not downloaded (a browser caches them anyway)."""
    return Client(url, verbose=False, download_files=False, analytics_enabled=False)


def session_script(n: int, turns: int) -> list[str]:
    """Session n's messages, tagged with n so its chat shows whether anyone else's words leaked in."""
    return [f"{OPENINGS[n % len(OPENINGS)]} s{n}"] + [f"{FEEDBACK[(n + t) % len(FEEDBACK)]} s{n}"
                                                      for t in range(turns - 1)]


def user_texts(chat: list[dict]) -> list[str]:
    texts = []
    for message in chat:
        if message["role"] == "user":
            content = message["content"]
            parts = content if isinstance(content, list) else [content]
            texts.append("".join(p["text"] if isinstance(p, dict) else str(p) for p in parts))
    return texts


def run_session(url: str, n: int, turns: int, deadline: float) -> dict:
    """One shopper: a fresh client (its own session), `turns` messages; latency of each and what its chat shows."""
    client = new_client(url)
    script = session_script(n, turns)
    latencies, isolated, shown = [], True, 0
    for said, text in enumerate(script, start=1):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        out = client.predict(text, api_name="/send")
        latencies.append(time.perf_counter() - start)
        isolated &= user_texts(out[0]) == script[:said]
        shown = len(out[1]["value"] if isinstance(out[1], dict) else out[1])
    return {"session": n, "latencies": latencies, "isolated": isolated, "items_shown_last_turn": shown}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def model_summary(model_dir: Path) -> dict:
    """The model's size as its config.yaml states it (backbone name, retriever width and layers)."""
    config = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
    retriever = config.get("retriever", {})
    return {"name": model_dir.name, "backbone": config.get("backbone", {}).get("model"),
            "retriever_width": retriever.get("width"), "retriever_layers": retriever.get("layers")}


def serve(args: argparse.Namespace, port: int, data_dir: str) -> subprocess.Popen:
    """The app in its own process (as `fashion-assistant serve` runs it), so the clients here do not share its GIL."""
    command = [sys.executable, str(REPO / "app.py"), "--model", args.model, "--catalog", args.catalog,
               "--port", str(port), "--data", data_dir]
    if args.concurrency:
        command += ["--concurrency", str(args.concurrency)]
    if args.split:
        command += ["--split", args.split]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    deadline = time.monotonic() + args.start_timeout
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the app exited: {server.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return server
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise SystemExit(f"the app did not start within {args.start_timeout:g} s") from None
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="a trained model directory")
    parser.add_argument("--catalog", default="demo", help="a catalog folder or file, or 'demo'")
    parser.add_argument("--split", choices=SPLITS, help="serve only this split (default: all)")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds for the app to load and start")
    parser.add_argument("--time-limit", type=float, default=600, help="seconds; sessions stop starting turns then")
    parser.add_argument("--concurrency", type=int, help="the app's events run at once (default: the app's own)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/app_concurrency.json")
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    with tempfile.TemporaryDirectory(prefix="app-concurrency-") as data_dir:
        port = free_port()
        server = serve(args, port, data_dir)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + args.time_limit
            load_before = os.getloadavg()[0]
            alone = run_session(url, args.sessions, args.turns, deadline)["latencies"]
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.sessions) as pool:
                sessions = list(pool.map(lambda n: run_session(url, n, args.turns, deadline), range(args.sessions)))
            wall = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(timeout=60)
            server.stderr.close()
        logged = {d["turns"][0]["text"]: [t["text"] for t in d["turns"]] for d in read_dialogs(data_dir)
                  if d["turns"]}
    latencies = [t for s in sessions for t in s["latencies"]]
    if not (latencies and alone):
        raise SystemExit(f"no turn finished within --time-limit {args.time_limit:g} s")
    log_isolated = all(logged.get(session_script(s["session"], args.turns)[0]) ==
                       session_script(s["session"], args.turns)[: len(s["latencies"])] for s in sessions)
    result = {
        "sessions": args.sessions, "turns_per_session": args.turns, "catalog": args.catalog,
        "split": args.split or "all", "model": model_summary(Path(args.model)), "turns_completed": len(latencies),
        "every_session_saw_only_its_own_chat": all(s["isolated"] for s in sessions),
        "every_session_logged_only_its_own_turns": log_isolated,
        "items_shown_per_turn": sorted({s["items_shown_last_turn"] for s in sessions}),
        "turn_latency_s": {"p50": round(percentile(latencies, 50), 3), "p90": round(percentile(latencies, 90), 3),
                           "p99": round(percentile(latencies, 99), 3), "max": round(max(latencies), 3),
                           "mean": round(statistics.fmean(latencies), 3)},
        "one_session_alone_turn_latency_s": {"p50": round(percentile(alone, 50), 3), "max": round(max(alone), 3)},
        "wall_s": round(wall, 2), "turns_per_s": round(len(latencies) / wall, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "app_concurrency": args.concurrency or "the app's default (two per core)",
        "note": "the app served by app.py in its own process on 127.0.0.1; gradio_client sessions all started at "
                "once; latency is one /send call: queueing, retrieval, the dialog log's write; thumbnails are "
                "static catalog files (never copied into gradio's cache); the 2 cores were shared with other work "
                "(load_average_1m before/after)",
    }
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
