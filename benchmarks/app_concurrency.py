"""Benchmark: 20 concurrent shoppers on the served app (loopback), each a 5-turn dialog: isolation and turn latency.

Shoppers speak gradio's queue protocol as a page does (`--client browser`, the default: join the queue with the
message, read the answer from the event stream, one connection pool per shopper, all in one asyncio loop), or
through `gradio_client` (`--client gradio_client`: a Client per shopper in a thread each, which on these 2 cores
spends about three times the server's CPU, so it measures mostly itself)."""

from __future__ import annotations

import argparse
import asyncio
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
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
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


class SendEndpoint:
    """The app's /send event as a page calls it: its id, trigger, and where the chat and results are in its outputs
    (read from the app's /config)."""

    def __init__(self, url: str) -> None:
        config = httpx.get(f"{url}config", timeout=30).json()
        self.url, self.prefix = url, config.get("api_prefix", "/gradio_api").strip("/")
        dependency = next(d for d in config["dependencies"] if d.get("api_name") == "send")
        types = {block["id"]: block["type"] for block in config["components"]}
        outputs = [types[i] for i in dependency["outputs"]]
        self.fn_index, self.trigger_id = dependency["id"], dependency["targets"][0][0]
        self.inputs = len(dependency["inputs"])
        self.queued = dependency.get("queue") is not False  # an event off the queue is one POST, as the page sends it
        # what the page runs after each turn (`.then` events), off the queue or on it, and when an output's value
        # changed, that output's change events (the state's inputs live on the server: sent as None)
        self.after = [(d["id"], len(d["inputs"]), d.get("queue") is not False) for d in config["dependencies"]
                      if d.get("trigger_after") == dependency["id"]]
        self.on_change = {position: [(d["id"], len(d["inputs"]), d.get("queue") is not False)
                                     for d in config["dependencies"] if [block, "change"] in d["targets"]]
                          for position, block in enumerate(dependency["outputs"])}
        self.chat, self.gallery = outputs.index("chatbot"), outputs.index("gallery")

    async def send(self, client: httpx.AsyncClient, session_hash: str, text: str, last_values: dict[int, object]
                   ) -> list:
        """The message as the page sends it (the tab's state lives on the server), then the events the page runs
        after it; the message's outputs. `last_values` holds the session's last values of outputs that have
        change events."""
        out = await self.run(client, session_hash, self.fn_index, [text] + [None] * (self.inputs - 1), self.queued)
        follow = list(self.after)
        for position, events in self.on_change.items():
            if events and out[position] != last_values.get(position, out[position]):
                follow += events
            last_values[position] = out[position]
        for fn_index, inputs, queued in follow:
            await self.run(client, session_hash, fn_index, [None] * inputs, queued)
        return out

    async def run(self, client: httpx.AsyncClient, session_hash: str, fn_index: int, data: list, queued: bool
                  ) -> list:
        """One event: posted and answered at once when it is off the queue; else joined to the queue, its answer
        read from the event stream."""
        body = {"data": data, "event_data": None, "fn_index": fn_index, "trigger_id": self.trigger_id,
                "session_hash": session_hash}
        if not queued:
            answer = await client.post(f"{self.url}{self.prefix}/run/predict", json=body)
            answer.raise_for_status()
            return answer.json()["data"]
        joined = await client.post(f"{self.url}{self.prefix}/queue/join", json=body)
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        async with client.stream("GET", f"{self.url}{self.prefix}/queue/data",
                                 params={"session_hash": session_hash}) as stream:
            async for line in stream.aiter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                    if not message.get("success", True):
                        raise RuntimeError(f"the app failed a turn: {message.get('output')}")
                    return message["output"]["data"]
        raise RuntimeError("the event stream closed before the turn completed")


async def run_browser_session(endpoint: SendEndpoint, n: int, turns: int, deadline: float) -> dict:
    """One shopper as a page: its own session hash and connections, `turns` messages, each turn's latency."""
    script = session_script(n, turns)
    latencies, isolated, shown = [], True, 0
    async with httpx.AsyncClient(timeout=60) as client:
        session_hash, last_values = uuid.uuid4().hex[:12], {}
        for said, text in enumerate(script, start=1):
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            out = await endpoint.send(client, session_hash, text, last_values)
            latencies.append(time.perf_counter() - start)
            isolated &= user_texts(out[endpoint.chat]) == script[:said]
            gallery = out[endpoint.gallery]
            shown = len(gallery["value"] if isinstance(gallery, dict) else gallery)
    return {"session": n, "latencies": latencies, "isolated": isolated, "items_shown_last_turn": shown}


def run_sessions(args: argparse.Namespace, url: str, deadline: float) -> tuple[list[float], list[dict], float]:
    """One shopper alone, then `args.sessions` at once: (the lone one's latencies, every session, wall seconds)."""
    if args.client == "gradio_client":
        alone = run_session(url, args.sessions, args.turns, deadline)["latencies"]
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.sessions) as pool:
            sessions = list(pool.map(lambda n: run_session(url, n, args.turns, deadline), range(args.sessions)))
        return alone, sessions, time.perf_counter() - start
    endpoint = SendEndpoint(url)

    async def together() -> tuple[list[dict], float]:
        start = time.perf_counter()
        sessions = await asyncio.gather(*(run_browser_session(endpoint, n, args.turns, deadline)
                                          for n in range(args.sessions)))
        return list(sessions), time.perf_counter() - start

    alone = asyncio.run(run_browser_session(endpoint, args.sessions, args.turns, deadline))["latencies"]
    sessions, wall = asyncio.run(together())
    return alone, sessions, wall


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
    parser.add_argument("--client", choices=("browser", "gradio_client"), default="browser",
                        help="how shoppers talk to the app (default: gradio's queue protocol, as a page)")
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
            alone, sessions, wall = run_sessions(args, url, deadline)
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
        "app_concurrency": args.concurrency or "the app's default (two per core)", "client": args.client,
        "note": "the app served by app.py in its own process on 127.0.0.1; the sessions all started at once, "
                "each sending its next message as soon as the last was answered; latency is one /send call: "
                "queueing, retrieval, the dialog log's write; thumbnails are static catalog files (never copied "
                "into gradio's cache); how busy the 2 cores were before and after: load_average_1m",
    }
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
