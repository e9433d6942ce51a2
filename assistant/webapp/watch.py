"""The app's watch tab: a simulated shopper with a hidden target talks to the assistant, and a plot shows its rank."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from assistant.core.catalog import Item
from assistant.core.dialog import PAGE_SIZE, target_ranks
from assistant.core.messages import format_understood, key_attributes
from assistant.session import turn_threads
from assistant.webapp.layout import CHAT_OPTIONS, as_text, gallery_update, results_gallery, thumbnail

log = logging.getLogger(__name__)

WATCH_MAX_TURNS = 10


def target_rank(dialog: Any, target: Item) -> int:
    """1-based rank of the target over the whole catalog, among the items not talked about yet."""
    context = dialog.context
    scores = context.ranker.scores([dialog.state])
    row = np.array([context.catalog.index_of(target.id)])
    return int(target_ranks(scores, row, [dialog.state.shown_rows()])[0])


def rank_figure(ranks: list[int], catalog_size: int, turns: int) -> Figure:
    """The hidden target's rank after each turn, 1 at the top, on a log scale."""
    figure = Figure(figsize=(6.4, 2.6), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.plot(range(1, len(ranks) + 1), ranks, marker="o", color="#e11d48", linewidth=2)
    for turn, rank in enumerate(ranks, start=1):
        axes.annotate(str(rank), (turn, rank), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_ylim(catalog_size * 1.5, 0.5)
    axes.set_xlim(0.7, turns + 0.3)
    axes.set_xticks(range(1, turns + 1))
    axes.set_xlabel("turn")
    axes.set_ylabel("rank (1 = top)")
    axes.set_title("Where the hidden target ranks", fontsize=10)
    axes.grid(alpha=0.3)
    return figure


def available_shoppers(assistant: Any) -> list[str]:
    """The simulated shoppers this assistant can field for watch mode, the trained simulator first."""
    kinds = []
    for kind in ("simulator", "template"):
        try:
            assistant.user(kind)
        except Exception as error:  # a missing or unreadable model file: watch mode offers the others
            log.warning("watch mode without the %s shopper: %s: %s", kind, type(error).__name__, error)
            continue
        kinds.append(kind)
    return kinds or ["template"]


def watch_gallery_update(results: list[Item], target: Item) -> dict[str, Any]:
    """The first page of results, with the hidden target selected when it is on it."""
    shown = results[:PAGE_SIZE]
    return gallery_update(shown, shown.index(target) if target in shown else None)


class WatchHandlers:
    """The watch tab's events: draw or preview a hidden target, and play a simulated dialog towards it."""

    def __init__(self, assistant: Any, watch_delay: float) -> None:
        self.assistant = assistant
        self.catalog = assistant.catalog
        self.targets = self.catalog.split("test").ids or self.catalog.ids
        self.watch_delay = watch_delay

    def on_draw_target(self) -> tuple:
        target = self.catalog[random.choice(self.targets)]
        return target.id, *self.target_preview(target.id)

    def target_preview(self, target_id: str) -> tuple:
        target_id = (target_id or "").strip()
        if target_id not in self.catalog:
            return None, f"No item with id {as_text(repr(target_id))} in the catalog."
        target = self.catalog[target_id]
        return (str(target.image_path) if target.image_path else None,
                f"**Hidden target:** {as_text(target.title)}  \n{as_text(' · '.join(key_attributes(target)))}")

    def on_watch(self, user_kind: str, target_id: str, turns: float) -> Iterator[tuple]:
        """A simulated shopper with a hidden target against the assistant, one yield per turn."""
        catalog = self.catalog
        target_id, turns = (target_id or "").strip(), max(1, min(int(turns), WATCH_MAX_TURNS))
        if target_id not in catalog:
            yield [], gr.skip(), gr.skip(), "Draw a random target first (or type an item id)."
            return
        try:
            user = self.assistant.user(user_kind)
        except Exception as error:  # shown to the audience instead of a bare "Error"
            yield [], gr.skip(), gr.skip(), as_text(f"The {user_kind} shopper is not available: {error}")
            return
        target = catalog[target_id]
        turn_threads(1)
        dialog = self.assistant.dialog()
        start = catalog[random.choice([i for i in catalog.ids if i != target.id])]
        results = dialog.start(item=start.id)
        history = [{"role": "assistant", "content": as_text(f"Let's start from a random item: {start.title}.")}]
        ranks: list[int] = []
        yield history, watch_gallery_update(results, target), gr.skip(), "Turn 0: a random start."
        for turn in range(1, turns + 1):
            time.sleep(self.watch_delay)
            feedback = user.respond(dialog.reference, target, turn)
            if not feedback.strip():
                yield gr.skip(), gr.skip(), gr.skip(), f"Turn {turn}: the shopper had nothing more to say."
                return
            results = dialog.reply(feedback)
            ranks.append(target_rank(dialog, target))
            found = results[0].id == target.id
            history.append({"role": "user", "content": as_text(feedback)})
            history.append({"role": "assistant", "content": as_text(
                f"Top result: {results[0].title}. "
                f"Understood: {format_understood(self.assistant.understood(dialog))}. "
                f"The target is at rank {ranks[-1]}." + (" Found it!" if found else ""))})
            status = f"Turn {turn}: the target is at rank {ranks[-1]} of {len(catalog):,}."
            yield (history, watch_gallery_update(results, target), rank_figure(ranks, len(catalog), turns),
                   status + (" Found it!" if found else ""))
            if found:
                return


def watch_tab(assistant: Any, watch_delay: float) -> None:
    """Lay out the watch tab (inside an open gr.Tab) and wire its events; `watch_delay` seconds between turns."""
    handlers = WatchHandlers(assistant, watch_delay)
    shoppers = available_shoppers(assistant)
    gr.Markdown("A simulated shopper knows a hidden target and tells the assistant, turn by turn, how "
                "the top result should change. The plot shows where the target ranks after each turn.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=340):
            with gr.Row():
                user_kind = gr.Dropdown(shoppers, value=shoppers[0], label="Shopper", elem_id="watch-user")
                turns = gr.Slider(1, WATCH_MAX_TURNS, value=5, step=1, label="Turns", elem_id="watch-turns")
            with gr.Row():
                target_id = gr.Textbox(label="Target item id", elem_id="watch-target-id", scale=2)
                draw = gr.Button("🎲 Draw", elem_id="watch-draw", scale=1)
            with gr.Row(equal_height=True):
                target_image = thumbnail("Hidden target", "watch-target")
                target_text = gr.Markdown(elem_id="watch-target-text")
            start_watch = gr.Button("▶ Watch", variant="primary", elem_id="watch-start")
            watch_status = gr.Markdown(elem_id="watch-status")
            watch_chat = gr.Chatbot(label="Dialog", show_label=False, height=330, elem_id="watch-chat",
                                    **CHAT_OPTIONS)
        with gr.Column(scale=3):
            rank_plot = gr.Plot(show_label=False, format="png", elem_id="watch-plot")
            watch_gallery = results_gallery("What the assistant shows", "watch-gallery")
    draw.click(handlers.on_draw_target, None, [target_id, target_image, target_text], api_name="draw_target")
    target_id.submit(handlers.target_preview, [target_id], [target_image, target_text], api_visibility="undocumented")
    start_watch.click(handlers.on_watch, [user_kind, target_id, turns],
                      [watch_chat, watch_gallery, rank_plot, watch_status], api_name="watch")
