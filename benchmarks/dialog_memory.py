"""Benchmark: resident memory of one process over 10,000 distinct shopper messages through the dialog loop."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from assistant.api import Assistant
from assistant.cli import demo_model_dir
from retriever.text import CACHE_BYTES

COLOURS = ("red", "blue", "green", "black", "white", "pink", "navy", "grey", "yellow", "brown")
CHANGES = ("shorter", "longer", "with sleeves", "without a print", "for women", "for men", "more casual", "looser")


def rss_mib() -> float:
    """This process's resident set size (VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def message(n: int) -> str:
    """The n-th distinct message: a colour, a change and a number no other message has."""
    return f"like this but {COLOURS[n % len(COLOURS)]}, {CHANGES[(n // 10) % len(CHANGES)]}, style {n}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="a trained model (default: the demo's)")
    parser.add_argument("--catalog", default="demo")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--turns", type=int, default=5, help="messages per dialog before a new shopper starts")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/dialog_memory.json")
    args = parser.parse_args()
    assistant = Assistant.load(args.model or demo_model_dir(args.catalog), args.catalog, progress=False)
    samples: list[tuple[int, float]] = []
    start = time.perf_counter()
    dialog = None
    for n in range(args.messages):
        if n % args.turns == 0:
            dialog = assistant.dialog()
            dialog.start(text=message(n))
        else:
            dialog.reply(message(n))
        if (n + 1) % 500 == 0:
            samples.append((n + 1, round(rss_mib(), 1)))
    after_warmup = next(rss for count, rss in samples if count >= args.warmup)
    final = samples[-1][1]
    encoder = assistant.retriever.text
    result = {"messages": args.messages, "distinct": len({message(n) for n in range(args.messages)}),
              "rss_after_warmup_mib": after_warmup, "rss_final_mib": final,
              "growth_after_warmup": round(final / after_warmup - 1, 4),
              "within_5_percent": final <= after_warmup * 1.05,
              "text_cache_entries": encoder.cache_size(), "text_cache_limit_bytes": CACHE_BYTES,
              "rss_every_500_messages": samples, "seconds": round(time.perf_counter() - start, 1),
              "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
              "note": f"{args.catalog} catalog, one process, a new dialog every {args.turns} messages; "
                      "the 2 cores were shared with other engineers' runs"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_every_500_messages"}, indent=2))


if __name__ == "__main__":
    main()
