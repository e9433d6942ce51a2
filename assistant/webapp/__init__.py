"""The Gradio app: shop by chatting with the assistant, or watch a simulated shopper find its hidden target."""

from __future__ import annotations

import argparse
import html
import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from assistant.api import Assistant
from assistant.chat import RESULTS_SHOWN, ShoppingSession
from assistant.core.catalog import Catalog, CatalogError, Item, report_lines
from assistant.core.dialog import target_ranks
from assistant.core.dialog_log import DialogLog
from assistant.core.loaders import load_catalog
from assistant.core.messages import (
    MAX_UPLOAD_BYTES,
    format_understood,
    item_caption,
    key_attributes,
)
from assistant.core.storage import cache_dir

log = logging.getLogger(__name__)

WATCH_MAX_TURNS = 10
THEME = gr.themes.Soft(primary_hue="rose", secondary_hue="slate", neutral_hue="slate",
                       font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "Consolas", "monospace"])
CSS = """
.gradio-container { max-width: 1320px !important; margin: auto; }
#title h1 { margin-bottom: 0; }
#title p { margin-top: 4px; color: var(--body-text-color-subdued); }
#shop-status, #watch-status { min-height: 1.6em; color: var(--body-text-color-subdued); }
.results .grid-wrap { max-height: none !important; overflow: visible !important; }
.results .thumbnail-item { display: flex; flex-direction: column; height: auto !important;
    aspect-ratio: auto !important;
    background: var(--background-fill-secondary); }
.results .thumbnail-item img { height: 128px !important; width: 100%; object-fit: contain; padding-top: 6px; }
.results .caption-label { position: static !important; transform: none !important; max-width: 100% !important;
    white-space: pre-line !important; font-size: 11.5px; line-height: 1.3; padding: 0 !important;
    margin: 4px 6px 6px; max-height: 5.2em; text-align: left; background: transparent !important;
    color: var(--body-text-color) !important; overflow: hidden; }
.results .grid-container { padding-top: 0 !important; }
.results .thumbnail-item.selected { box-shadow: 0 0 0 3px var(--color-accent) !important; }
.reference-thumb img { object-fit: contain; }
"""
CHAT_OPTIONS: dict[str, Any] = {"render_markdown": False, "sanitize_html": True, "latex_delimiters": [],
                                "allow_tags": False, "feedback_options": None, "buttons": []}


def as_text(text: str) -> str:
    """Shopper or catalog text shown as the characters it is: `<b>` stays `<b>`, never markup."""
    return html.escape(text, quote=False)


@dataclass
class ShopState:
    """One browser tab's shopping session and the chat shown for it."""

    session: ShoppingSession
    history: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one event at a time per tab

    def say(self, role: str, text: str) -> None:
        self.history.append({"role": role, "content": as_text(text)})


def gallery_value(items: Sequence[Item]) -> list[tuple[str, str]]:
    return [(str(item.image_path), item_caption(item)) for item in items]


def gallery_update(items: Sequence[Item], selected: int | None = None) -> gr.Gallery:
    """New results with the selection cleared (or set), so an old click is not shown on new items."""
    return gr.Gallery(value=gallery_value(items), selected_index=selected)


def results_message(session: ShoppingSession) -> str:
    top = f"Top match: {session.results[0].title}. " if session.results else "Nothing matches. "
    return f"{top}Understood: {format_understood(session.understood)}."


def reference_text(session: ShoppingSession) -> str:
    reference = session.reference
    if session.reference_is_photo:
        return "**Reference:** your photo  \nYour next message says how it should change."
    if reference is None:
        return "**Reference:** none yet. Click any item to talk about it, or describe what you want."
    why = "you clicked it" if session.clicked is not None else "the top result"
    return (f"**Reference** ({why}): {as_text(reference.title)}  \n{as_text(' · '.join(key_attributes(reference)))}"
            "  \nYour next message says how it should change.")


def understood_text(session: ShoppingSession) -> str:
    if not session.started:
        return "**Understood:** nothing yet."
    return f"**Understood:** {as_text(format_understood(session.understood))}"


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


def build_app(assistant: Any, data_dir: str | os.PathLike | None = None, watch_delay: float = 0.8,
              concurrency: int = 4) -> gr.Blocks:
    """The app over a loaded Assistant; dialogs are logged under `data_dir` when given."""
    catalog = assistant.catalog
    require_a_page(catalog)
    dialog_log = DialogLog(data_dir, source="app", catalog=catalog.fingerprint) if data_dir else None
    targets = catalog.split("test").ids or catalog.ids
    shoppers = available_shoppers(assistant)

    def shop_outputs(state: ShopState, status: str = "") -> tuple:
        session = state.session
        reference = session.reference
        selected = session.results.index(session.clicked) if session.clicked in session.results else None
        thumbnail = session.photo_image if session.reference_is_photo else \
            str(reference.image_path) if reference and reference.image_path else None
        return (state, state.history, gallery_update(session.results, selected), thumbnail,
                reference_text(session), understood_text(session), as_text(status))

    def unchanged(state: ShopState, status: str) -> tuple:
        return (state, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), as_text(status))

    def ensure(state: ShopState | None) -> ShopState:
        return state if state is not None else ShopState(ShoppingSession(assistant, dialog_log))

    def on_load(state: ShopState | None) -> tuple:
        return shop_outputs(ensure(state))

    def on_send(text: str, state: ShopState | None) -> tuple:
        state = ensure(state)
        with state.lock:
            return send_message(text, state)

    def send_message(text: str, state: ShopState) -> tuple:
        outcome = state.session.say(text)
        if not outcome.advanced:
            return (*unchanged(state, outcome.note or ""), gr.skip())
        state.say("user", outcome.text or "")
        state.say("assistant", results_message(state.session))
        return (*shop_outputs(state, outcome.note or ""), "")

    def on_select(state: ShopState | None, event: gr.SelectData) -> tuple:
        state = ensure(state)
        caption = event.value.get("caption") if isinstance(event.value, dict) else None
        with state.lock:
            return select_item(state, event.index, caption)

    def select_item(state: ShopState, index: Any, caption: str | None) -> tuple:
        """The clicked picture's item, checked against its caption (results may have changed since it was drawn)."""
        session = state.session
        on_show = isinstance(index, int) and 0 <= index < len(session.results)
        if not on_show or (caption is not None and caption != item_caption(session.results[index])):
            return unchanged(state, "That item is no longer on show; please click again.")
        item = session.results[index]
        if session.click(item).advanced:
            state.say("user", f"Like this one: {item.title}")
            state.say("assistant", results_message(session))
        return shop_outputs(state, f"Reference: {item.title}. Now say how it should change.")

    def on_photo(path: str | None, state: ShopState | None) -> tuple:
        state = ensure(state)
        with state.lock:
            return start_from_photo(path, state)

    def start_from_photo(path: str | None, state: ShopState) -> tuple:
        if not path:
            return unchanged(state, "The upload did not arrive; please try again.")
        try:
            state.session.photo(path)
        except ValueError as error:  # an UploadError, or an assistant that cannot read photos
            return unchanged(state, str(error))
        state.history = []
        state.say("user", "📷 Something like my photo")
        state.say("assistant", results_message(state.session))
        return shop_outputs(state)

    def on_pick(state: ShopState | None) -> tuple:
        state = ensure(state)
        with state.lock:
            try:
                item = state.session.pick()
            except ValueError as error:
                return unchanged(state, str(error).capitalize() + ".")
            state.say("assistant", f"Your pick: {item.title}. Thank you, I have noted it.")
            return shop_outputs(state, f"Picked: {item.title}")

    def on_reset(state: ShopState | None) -> tuple:
        state = ensure(state)
        with state.lock:
            state.session.restart()
            state.history = []
            return (*shop_outputs(state, "Started over."), "")

    def on_draw_target() -> tuple:
        target = catalog[random.choice(targets)]
        return target.id, *target_preview(target.id)

    def target_preview(target_id: str) -> tuple:
        target_id = (target_id or "").strip()
        if target_id not in catalog:
            return None, f"No item with id {as_text(repr(target_id))} in the catalog."
        target = catalog[target_id]
        return (str(target.image_path) if target.image_path else None,
                f"**Hidden target:** {as_text(target.title)}  \n{as_text(' · '.join(key_attributes(target)))}")

    def watch_gallery_update(results: list[Item], target: Item) -> gr.Gallery:
        shown = results[:RESULTS_SHOWN]
        return gallery_update(shown, shown.index(target) if target in shown else None)

    def on_watch(user_kind: str, target_id: str, turns: float) -> Iterator[tuple]:
        """A simulated shopper with a hidden target against the assistant, one yield per turn."""
        target_id, turns = (target_id or "").strip(), max(1, min(int(turns), WATCH_MAX_TURNS))
        if target_id not in catalog:
            yield [], gr.skip(), gr.skip(), "Draw a random target first (or type an item id)."
            return
        try:
            user = assistant.user(user_kind)
        except Exception as error:  # shown to the audience instead of a bare "Error"
            yield [], gr.skip(), gr.skip(), as_text(f"The {user_kind} shopper is not available: {error}")
            return
        target = catalog[target_id]
        dialog = assistant.dialog()
        start = catalog[random.choice([i for i in catalog.ids if i != target.id])]
        results = dialog.start(item=start.id)
        history = [{"role": "assistant", "content": as_text(f"Let's start from a random item: {start.title}.")}]
        ranks: list[int] = []
        yield history, watch_gallery_update(results, target), gr.skip(), "Turn 0: a random start."
        for turn in range(1, turns + 1):
            time.sleep(watch_delay)
            feedback = user.respond(dialog.reference, target, turn)
            if not feedback.strip():
                yield gr.skip(), gr.skip(), gr.skip(), f"Turn {turn}: the shopper had nothing more to say."
                return
            results = dialog.reply(feedback)
            ranks.append(target_rank(dialog, target))
            found = results[0].id == target.id
            history.append({"role": "user", "content": as_text(feedback)})
            history.append({"role": "assistant", "content": as_text(
                f"Top result: {results[0].title}. Understood: {format_understood(assistant.understood(dialog))}. "
                f"The target is at rank {ranks[-1]}." + (" Found it!" if found else ""))})
            status = f"Turn {turn}: the target is at rank {ranks[-1]} of {len(catalog):,}."
            yield (history, watch_gallery_update(results, target), rank_figure(ranks, len(catalog), turns),
                   status + (" Found it!" if found else ""))
            if found:
                return

    with gr.Blocks(title="Fashion assistant", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# Fashion assistant\nDescribe what you want, click an item to say how it should change, "
                    "or upload a photo. Press **This is it** when you find it.", elem_id="title")
        with gr.Tabs():
            with gr.Tab("Shop", id="shop"):
                state = gr.State(None)
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=340):
                        chatbot = gr.Chatbot(label="Chat", show_label=False, height=440, elem_id="shop-chat",
                                             placeholder="Try: *a navy shirt for men*", **CHAT_OPTIONS)
                        with gr.Row():
                            message = gr.Textbox(show_label=False, scale=5, elem_id="shop-message", autofocus=True,
                                                 placeholder="e.g. a red floral dress, or: like this but shorter")
                            send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="shop-send")
                        status = gr.Markdown(elem_id="shop-status")
                        with gr.Row():
                            photo_button = gr.UploadButton("📷 Use a photo", file_types=["image"], size="md",
                                                    min_width=100, elem_id="shop-photo")
                            pick = gr.Button("✓ This is it", size="md", min_width=100, elem_id="shop-pick")
                            reset = gr.Button("↺ Reset", size="md", min_width=100, elem_id="shop-reset")
                    with gr.Column(scale=3):
                        with gr.Row(elem_id="shop-reference-row", equal_height=True):
                            reference_image = gr.Image(label="Reference", show_label=False, interactive=False,
                                                       height=120, width=100, buttons=[], scale=0, min_width=100,
                                                       elem_id="shop-reference-image", elem_classes="reference-thumb")
                            with gr.Column(scale=4):
                                reference = gr.Markdown(elem_id="shop-reference")
                                understood = gr.Markdown(elem_id="shop-understood")
                        gallery = gr.Gallery(label="Results", show_label=False, columns=6,
                                             height="auto", object_fit="contain", allow_preview=False,
                                             elem_id="shop-gallery", elem_classes="results", buttons=[])
                outputs = [state, chatbot, gallery, reference_image, reference, understood, status]
                app.load(on_load, [state], outputs, api_name=False)
                send.click(on_send, [message, state], [*outputs, message], api_name="send")
                message.submit(on_send, [message, state], [*outputs, message], api_name=False)
                gallery.select(on_select, [state], outputs, api_name="select")
                photo_button.upload(on_photo, [photo_button, state], outputs, api_name="photo")
                pick.click(on_pick, [state], outputs, api_name="pick")
                reset.click(on_reset, [state], [*outputs, message], api_name="reset")
                chatbot.clear(on_reset, [state], [*outputs, message], api_name=False)

            with gr.Tab("Watch a simulated shopper", id="watch"):
                gr.Markdown("A simulated shopper knows a hidden target and tells the assistant, turn by turn, how "
                            "the top result should change. The plot shows where the target ranks after each turn.")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=340):
                        with gr.Row():
                            user_kind = gr.Dropdown(shoppers, value=shoppers[0], label="Shopper",
                                                    elem_id="watch-user")
                            turns = gr.Slider(1, WATCH_MAX_TURNS, value=5, step=1, label="Turns",
                                              elem_id="watch-turns")
                        with gr.Row():
                            target_id = gr.Textbox(label="Target item id", elem_id="watch-target-id", scale=2)
                            draw = gr.Button("🎲 Draw", elem_id="watch-draw", scale=1)
                        with gr.Row(equal_height=True):
                            target_image = gr.Image(label="Hidden target", show_label=False, interactive=False,
                                                    height=120, width=100, buttons=[], scale=0, min_width=100,
                                                    elem_id="watch-target", elem_classes="reference-thumb")
                            target_text = gr.Markdown(elem_id="watch-target-text")
                        start_watch = gr.Button("▶ Watch", variant="primary", elem_id="watch-start")
                        watch_status = gr.Markdown(elem_id="watch-status")
                        watch_chat = gr.Chatbot(label="Dialog", show_label=False, height=330, elem_id="watch-chat",
                                                **CHAT_OPTIONS)
                    with gr.Column(scale=3):
                        rank_plot = gr.Plot(show_label=False, format="png", elem_id="watch-plot")
                        watch_gallery = gr.Gallery(label="What the assistant shows", show_label=False, columns=6,
                                                   height="auto",
                                                   object_fit="contain", allow_preview=False, elem_id="watch-gallery",
                                                   elem_classes="results", buttons=[])
                draw.click(on_draw_target, None, [target_id, target_image, target_text], api_name="draw_target")
                target_id.submit(target_preview, [target_id], [target_image, target_text], api_name=False)
                start_watch.click(on_watch, [user_kind, target_id, turns],
                                  [watch_chat, watch_gallery, rank_plot, watch_status], api_name="watch")
    app.queue(default_concurrency_limit=concurrency)
    return app


def image_folders(catalog: Catalog) -> list[str]:
    """The catalog's image root, where its loader confined every image: the only folder outside gradio's own cache
    the app may serve (none for a catalog built in memory without one)."""
    return [str(catalog.image_root)] if catalog.image_root is not None else []


def private_files(catalog: Catalog) -> list[str]:
    """The catalog's own file when it lies inside the image root (a shop's catalog.jsonl beside its images)."""
    source = Path(catalog.report.source)
    return [str(source.resolve())] if source.is_file() else []


def require_a_page(catalog: Catalog) -> None:
    """The app shows a page of RESULTS_SHOWN items; a smaller catalog is a CatalogError."""
    if len(catalog) < RESULTS_SHOWN:
        raise CatalogError(f"{catalog.name}: {len(catalog)} usable item(s); the app shows {RESULTS_SHOWN} a page "
                           f"and needs at least that many")


def warm_up(assistant: Any) -> None:
    """One throwaway dialog, so lazily loaded parts are ready before the first shopper arrives."""
    dialog = assistant.dialog()
    dialog.start(text="a shirt")
    dialog.reply("in blue")


def launch_app(assistant: Any, data_dir: str | os.PathLike | None = None, host: str = "127.0.0.1",
               port: int = 7860, block: bool = True, quiet: bool = False, **app_options: Any) -> tuple[gr.Blocks, str]:
    """Build and serve the app; with `block=False` it returns (app, local url) and serves from a thread."""
    warm_up(assistant)
    app = build_app(assistant, data_dir, **app_options)
    _, url, _ = app.launch(server_name=host, server_port=port, allowed_paths=image_folders(assistant.catalog),
                           blocked_paths=private_files(assistant.catalog),
                           prevent_thread_lock=not block, quiet=quiet, theme=THEME, css=CSS,
                           max_file_size=MAX_UPLOAD_BYTES, footer_links=["api"], show_error=False)
    return app, url


def serve(model_dir: str | os.PathLike, catalog: str | os.PathLike | Catalog, host: str = "127.0.0.1",
          port: int = 7860, data_dir: str | os.PathLike | None = None) -> None:
    """Load a trained model over a catalog and serve the app until interrupted; dialogs go to `data_dir`."""
    catalog = catalog if isinstance(catalog, Catalog) else load_catalog(catalog)
    require_a_page(catalog)
    assistant = Assistant.load(model_dir, catalog=catalog)
    if assistant.features.failed:
        print("\n".join(report_lines(assistant.features.report().as_dict(), title="image features")))
    data_dir = Path(data_dir) if data_dir else cache_dir() / "dialogs"
    print(f"Logging dialogs to {data_dir / 'dialogs.sqlite'}")
    launch_app(assistant, data_dir, host=host, port=port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="a trained model directory")
    parser.add_argument("--catalog", default="demo", help="a catalog folder or file, or 'demo'")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--images-root", help="the folder the catalog's images must lie in (default: its own)")
    parser.add_argument("--data", help="folder for the dialog log (default: the cache's dialogs/)")
    args = parser.parse_args(argv)
    serve(args.model, load_catalog(args.catalog, images_root=args.images_root), args.host, args.port, args.data)


if __name__ == "__main__":
    main()
