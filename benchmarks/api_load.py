"""Benchmark: N concurrent 5-turn dialogs against `fashion-assistant api` on loopback (one replica on SQLite, or
two replicas on one PostgreSQL, turns alternating between them): turns/s, latency, errors, isolation; and a
server's memory over 10,000 distinct messages."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx

from assistant.cli import demo_model_dir
from assistant.core.catalog import SPLITS
from assistant.core.storage import atomic_write_text
from assistant.core.store import POSTGRES_SCHEMES, temporary_postgres
from assistant.service.app import REQUEST_THREADS

REPO = Path(__file__).resolve().parent.parent
FPI = Path(os.environ.get("FASHION_ASSISTANT_FPI", REPO.parent / "shared/data/fashion-product-images-small"))
OPENINGS = ["a red dress", "black trousers for men", "a white shirt", "a blue skirt", "a green jacket",
            "a grey sweater", "navy shorts", "a pink t-shirt", "a floral dress", "brown leather shoes",
            "a black handbag", "a yellow kurta for women"]
FEEDBACK = ["in blue", "with long sleeves", "shorter", "for women", "not black", "in black", "casual",
            "for the summer", "in white", "for men", "formal", "in green"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dialog_script(n: int, turns: int, distinct: bool) -> list[str]:
    """Dialog n's messages; with `distinct` each carries a word of its own (every message a new string)."""
    words = [OPENINGS[n % len(OPENINGS)]] + [FEEDBACK[(n * 7 + t) % len(FEEDBACK)] for t in range(turns - 1)]
    return [f"{text} please{n}x{t}" for t, text in enumerate(words)] if distinct else words


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def replicas(args: argparse.Namespace, store: str, count: int) -> Iterator[list[tuple[str, subprocess.Popen]]]:
    """`count` `fashion-assistant api` processes over one store, each on its own port, until the block ends."""
    servers = []
    try:
        for _ in range(count):
            port = free_port()
            command = [sys.executable, "-m", "assistant", "api", "--model", str(args.model), "--catalog",
                       str(args.catalog), "--store", store, "--port", str(port)] + \
                      (["--split", args.split] if args.split else []) + \
                      (["--request-threads", str(args.request_threads)] if args.request_threads else [])
            process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            servers.append((f"http://127.0.0.1:{port}", process))
        for url, process in servers:
            deadline = time.monotonic() + 900
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                        break
                if process.poll() is not None:
                    raise RuntimeError(process.stderr.read().decode()[-3000:])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not start")
                time.sleep(0.5)
        yield servers
    finally:
        for _, process in servers:
            process.terminate()
        for _, process in servers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            process.stderr.close()


async def run_load(urls: list[str], dialogs: int, concurrency: int, turns: int, time_limit: float,
                   distinct: bool = False, first: int = 0, alternate: bool = False) -> dict:
    """`dialogs` dialogs (numbered from `first`) of `turns` turns, `concurrency` at a time. Dialog n goes to
    replica n mod len(urls) (a load balancer's affinity); with `alternate` each request goes to the next replica,
    so every turn lands on a replica that must first play the other's turn (the worst case).

    The client is aiohttp: on these cores the load generator competes with the servers, and httpx spent 0.44 cores
    on 300 turns/s where aiohttp spends 0.15. Each shopper has its own connection, as each browser has: one pool
    shared by all shoppers queued their requests in its own order (measured: up to 0.5 s between a request sent
    and the server's app receiving it, with the server's event loop free). Stops starting dialogs at `time_limit`.
    Every dialog is then read back (GET) and compared with what it sent and was shown: `isolated` says whether
    every dialog saw exactly its own turns.
    """
    latencies: list[float] = []
    by_turn: dict[int, list[float]] = {}
    errors: dict[str, int] = {}
    sent: dict[str, list[tuple[str, list[str]]]] = {}
    queue = list(range(first, first + dialogs))
    deadline = time.monotonic() + time_limit
    request_number = 0

    def url_for(n: int) -> str:
        nonlocal request_number
        request_number += 1
        return urls[(request_number if alternate else n) % len(urls)]

    async def post(client: aiohttp.ClientSession, n: int, path: str, text: str, turn: int) -> dict | None:
        start = time.perf_counter()
        try:
            async with client.post(f"{url_for(n)}{path}", json={"text": text}) as response:
                body = await response.json() if response.status == 200 else None
        except (TimeoutError, aiohttp.ClientError) as error:
            errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
            return None
        latencies.append(time.perf_counter() - start)
        by_turn.setdefault(turn, []).append(latencies[-1])
        if body is None:
            errors[str(response.status)] = errors.get(str(response.status), 0) + 1
        return body

    async def shopper(client: aiohttp.ClientSession) -> None:
        while queue and time.monotonic() < deadline:
            n = queue.pop(0)
            script = dialog_script(n, turns, distinct)
            body = await post(client, n, "/v1/dialogs", script[0], 1)
            if body is None:
                continue
            dialog_id = body["dialog_id"]
            sent[dialog_id] = [(script[0], [item["id"] for item in body["items"]])]
            for turn, text in enumerate(script[1:], start=2):
                body = await post(client, n, f"/v1/dialogs/{dialog_id}/turns", text, turn)
                if body is None:
                    break
                sent[dialog_id].append((text, [item["id"] for item in body["items"]]))

    gc.freeze()  # this process's own full collections (a few hundred ms) are not the server's latency
    timeout = aiohttp.ClientTimeout(total=60)
    async with contextlib.AsyncExitStack() as clients:
        shoppers = [await clients.enter_async_context(aiohttp.ClientSession(timeout=timeout))
                    for _ in range(concurrency)]
        started = time.perf_counter()
        await asyncio.gather(*(shopper(client) for client in shoppers))
        elapsed = time.perf_counter() - started
        client = shoppers[0]
        mismatched = 0
        for dialog_id, turns_sent in sent.items():
            async with client.get(f"{urls[0]}/v1/dialogs/{dialog_id}") as response:
                stored = (await response.json())["turns"]
            seen = [(turn["text"], [item["id"] for item in turn["items"]]) for turn in stored]
            mismatched += seen != turns_sent
    completed = len(latencies)

    def p99(values: list[float]) -> float:
        return sorted(values)[min(len(values) - 1, int(0.99 * len(values)))]

    return {"dialogs": len(sent), "complete_dialogs": sum(len(t) == turns for t in sent.values()),
            "turns": completed, "seconds": round(elapsed, 2), "turns_per_s": round(completed / elapsed, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
            "p99_ms": round(p99(latencies) * 1000, 1) if latencies else None,
            "by_turn_ms": {turn: {"p50": round(statistics.median(values) * 1000, 1),
                                  "p99": round(p99(values) * 1000, 1)} for turn, values in sorted(by_turn.items())},
            "errors": errors, "isolated": mismatched == 0 and bool(sent), "dialogs_with_foreign_or_lost_turns":
            mismatched}


def load_run(args: argparse.Namespace, store: str, count: int) -> dict:
    with replicas(args, store, count) as servers:
        urls = [url for url, _ in servers]
        warm = asyncio.run(run_load(urls, args.concurrency, args.concurrency, args.turns, 60))  # caches, JIT paths
        load_before = os.getloadavg()
        pids = [process.pid for _, process in servers] + [os.getpid()]
        cpu_before, started = [cpu_seconds(pid) for pid in pids], time.perf_counter()
        result = asyncio.run(run_load(urls, args.dialogs, args.concurrency, args.turns, args.time_limit,
                                      alternate=args.alternate))
        seconds = time.perf_counter() - started
        cores = [(cpu_seconds(pid) - before) / seconds for pid, before in zip(pids, cpu_before, strict=True)]
        kind = "postgresql" if store.startswith(POSTGRES_SCHEMES) else "sqlite"
        result.update(model=args.model.name, split=args.split or "all",
                      request_threads=args.request_threads or REQUEST_THREADS[kind],
                      routing="each request to the next replica" if args.alternate and count > 1
                      else "each dialog to one replica", load_average_before=[round(v, 2) for v in load_before],
                      load_average_after=[round(v, 2) for v in os.getloadavg()],
                      warm_up_turns=warm["turns"], server_rss_mb=[round(rss_mb(p.pid)) for _, p in servers],
                      cores_used={"servers": [round(c, 2) for c in cores[:-1]], "load_generator": round(cores[-1], 2)})
        return result


def memory_run(args: argparse.Namespace, store: str) -> dict:
    """One server, `args.memory_messages` distinct messages: RSS after the first 10% (warm) and at the end."""
    with replicas(args, store, 1) as [(url, process)]:
        dialogs = args.memory_messages // args.turns
        warm_dialogs = max(1, dialogs // 10)
        asyncio.run(run_load([url], warm_dialogs, 8, args.turns, 3600, distinct=True))
        warm = rss_mb(process.pid)
        samples = [round(warm)]

        async def sampled() -> dict:
            async def sample() -> None:
                while True:
                    await asyncio.sleep(5)
                    samples.append(round(rss_mb(process.pid)))

            sampler = asyncio.create_task(sample())
            try:
                # dialogs numbered after the warm-up's, so every message is new to the server
                return await run_load([url], dialogs - warm_dialogs, 8, args.turns, 3600, distinct=True,
                                      first=warm_dialogs)
            finally:
                sampler.cancel()

        result = asyncio.run(sampled())
        end = rss_mb(process.pid)
        return {"messages": (warm_dialogs * args.turns) + result["turns"], "distinct": True,
                "rss_mb_after_warm_up": round(warm), "rss_mb_at_end": round(end),
                "growth": round(end / warm - 1, 3), "flat_within_10_percent": end <= warm * 1.10,
                "rss_mb_samples": samples, "errors": result["errors"], "isolated": result["isolated"],
                "load_average_after": [round(v, 2) for v in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=demo_model_dir("demo"),
                        help="a trained model directory (default: the cached demo model, `demo --no-serve`)")
    parser.add_argument("--catalog", type=Path, default=FPI, help="the catalog served (default: the real one)")
    parser.add_argument("--split", choices=SPLITS,
                        help="serve only this split (test: the 9k items held out from training); default: all")
    parser.add_argument("--request-threads", type=int,
                        help="each server's --request-threads (default: the server's, by store)")
    parser.add_argument("--concurrency", type=int, default=32, help="dialogs in flight at once")
    parser.add_argument("--dialogs", type=int, default=400, help="dialogs per run (each --turns turns)")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--time-limit", type=float, default=120, help="seconds after which no dialog starts")
    parser.add_argument("--alternate", action="store_true",
                        help="send each request to the next replica (default: each dialog stays on one)")
    parser.add_argument("--memory-messages", type=int, default=10000, help="0: skip the memory run")
    parser.add_argument("--runs", default="sqlite,postgresql,memory", help="which runs, comma-separated")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/api_load.json")
    args = parser.parse_args()
    runs = args.runs.split(",")
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    result: dict = {**previous, "benchmark": "api_load", "catalog": args.catalog.name,
                    "concurrency": args.concurrency, "turns_per_dialog": args.turns, "machine": {
                        "cpus": os.cpu_count(), "python": platform.python_version(),
                        "note": "server(s), load generator and PostgreSQL on the same cores; how busy they were "
                                "before each run is its load_average_before"}}
    suffix = f"_{args.split}_split" if args.split else ""
    with tempfile.TemporaryDirectory(prefix="api-load-") as folder:
        if "sqlite" in runs:
            result["one_replica_sqlite" + suffix] = load_run(args, folder, 1)
            print(json.dumps(result["one_replica_sqlite" + suffix]), flush=True)
        if "postgresql" in runs:
            with temporary_postgres() as url:
                name = "two_replicas_postgresql" + ("_alternating" if args.alternate else "") + suffix
                result[name] = load_run(args, url, 2)
                print(json.dumps(result[name]), flush=True)
        if "memory" in runs and args.memory_messages:
            result["memory"] = memory_run(args, str(Path(folder) / "memory"))
            print(json.dumps(result["memory"]), flush=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
