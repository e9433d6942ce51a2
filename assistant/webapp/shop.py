"""The app's shop tab: a shopper chats, clicks results and uploads a photo; one ShopState per browser tab."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from assistant.core.messages import format_understood, item_caption, key_attributes
from assistant.core.store import DialogStore
from assistant.session import ForeignDialog, ShoppingSession
from assistant.webapp.layout import (
    CHAT_OPTIONS,
    PageValues,
    as_text,
    gallery_update,
    results_gallery,
    thumbnail,
)

log = logging.getLogger(__name__)


@dataclass
class ShopState:
    """One browser tab's shopping session and the chat shown for it."""

    session: ShoppingSession
    history: list[dict] = field(default_factory=list)
    selected: int | None = None  # the result the page shows selected (a click's), None when none is
    marks_cleared: int = 0  # typed turns whose new results came with an old click's mark, cleared right after
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one event at a time per tab

    def say(self, role: str, text: str) -> None:
        self.history.append({"role": role, "content": as_text(text)})


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


def shop_outputs(state: ShopState, status: str = "") -> tuple:
    """Everything the tab shows for a state: state, chat, results, reference picture and text, understood, status."""
    session = state.session
    reference = session.reference
    selected = session.results.index(session.clicked) if session.clicked in session.results else None
    gallery = gallery_update(session.results, selected, shown=state.selected)
    state.selected = selected
    picture = session.photo_image if session.reference_is_photo else \
        str(reference.image_path) if reference and reference.image_path else None
    return (state, state.history, gallery, picture,
            reference_text(session), understood_text(session), as_text(status), session.id)


def unchanged(state: ShopState, status: str) -> tuple:
    """The tab as it was, with only a new status line."""
    return (state, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), as_text(status), gr.skip())


class ShopHandlers:
    """The shop tab's events; each takes the tab's state (None on a new tab) and returns what the tab shows."""

    def __init__(self, assistant: Any, store: DialogStore | None, turn_threads: int = 1,
                 turn_page: PageValues | None = None) -> None:
        self.assistant = assistant
        self.store = store
        # Typed turns, the busiest event, skip gradio's queue (one POST, no event stream) and wait here in order;
        # with `turn_page` their outputs are made into what the page reads here, not by gradio's postprocessing.
        self.turns = ThreadPoolExecutor(max_workers=turn_threads, thread_name_prefix="shop-turn")
        self.turn_page = turn_page

    def ensure(self, state: ShopState | None) -> ShopState:
        return state if state is not None else ShopState(ShoppingSession(self.assistant, self.store))

    def on_load(self, state: ShopState | None, saved_dialog: str | None) -> tuple:
        if state is None and self.store is not None and saved_dialog:
            state = self.resumed(saved_dialog)
        state = self.ensure(state)
        state.selected = None  # a page just opened shows no selection
        return shop_outputs(state)

    def resumed(self, dialog_id: str) -> ShopState | None:
        """The tab's dialog from the store, its chat retold from the stored turns (None when it is gone)."""
        try:
            session = ShoppingSession.resume(self.assistant, self.store, str(dialog_id))
        except (ForeignDialog, ValueError) as error:  # another catalog, or turns this catalog cannot play
            log.warning("starting afresh instead of dialog %s: %s", dialog_id, error)
            return None
        if session is None:
            return None
        state = ShopState(session)
        catalog = self.assistant.catalog
        for turn in self.store.turns(session.id):
            state.say("user", turn.text or ("📷 Something like my photo" if turn.kind == "photo"
                                            else f"Like this one: {catalog[turn.reference].title}"))
        if session.turns:
            state.say("assistant", results_message(session))
        return state

    async def on_send(self, text: str, state: ShopState | None) -> tuple:
        return await asyncio.get_running_loop().run_in_executor(self.turns, self.send_in_order, text, state)

    def send_in_order(self, text: str, state: ShopState | None) -> tuple:
        state = self.ensure(state)
        with state.lock:
            marked = state.selected is not None
            outputs = self.send_message(text, state)
            if marked and state.selected is None:
                state.marks_cleared += 1
        outputs = (*outputs, state.marks_cleared)
        return self.turn_page(outputs) if self.turn_page is not None else outputs

    @staticmethod
    def clear_mark() -> gr.Gallery:
        """Clear an old click's mark on a typed turn's new results. The turn's own update cannot (gradio drops a
        None property from an update dict), so it bumps a hidden counter whose change calls this: an event only
        after a click, as any update of the gallery's properties makes gradio rebuild its config. (A gr.State's
        change would not fire: the page hears of state changes only from queued events.)"""
        return gr.Gallery(selected_index=None)

    def send_message(self, text: str, state: ShopState) -> tuple:
        outcome = state.session.say(text)
        if not outcome.advanced:
            return (*unchanged(state, outcome.note or ""), gr.skip())
        state.say("user", outcome.text or "")
        state.say("assistant", results_message(state.session))
        return (*shop_outputs(state, outcome.note or ""), "")

    def on_select(self, state: ShopState | None, event: gr.SelectData) -> tuple:
        state = self.ensure(state)
        caption = event.value.get("caption") if isinstance(event.value, dict) else None
        with state.lock:
            state.selected = event.index  # the page marks a clicked picture before it asks
            return self.select_item(state, event.index, caption)

    def select_item(self, state: ShopState, index: Any, caption: str | None) -> tuple:
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

    def on_photo(self, path: str | None, state: ShopState | None) -> tuple:
        state = self.ensure(state)
        with state.lock:
            return self.start_from_photo(path, state)

    def start_from_photo(self, path: str | None, state: ShopState) -> tuple:
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

    def on_pick(self, state: ShopState | None) -> tuple:
        state = self.ensure(state)
        with state.lock:
            try:
                item = state.session.pick()
            except ValueError as error:
                return unchanged(state, str(error).capitalize() + ".")
            state.say("assistant", f"Your pick: {item.title}. Thank you, I have noted it.")
            return shop_outputs(state, f"Picked: {item.title}")

    def on_reset(self, state: ShopState | None) -> tuple:
        state = self.ensure(state)
        with state.lock:
            state.session.restart()
            state.history = []
            return (*shop_outputs(state, "Started over."), "")


def browser_secret(fingerprint: str, store: DialogStore | None) -> str:
    """The key the tab's dialog id is kept under in the browser: the same after a restart over the same store."""
    where = getattr(store, "path", None) or getattr(store, "url", "")
    return hashlib.sha256(f"{fingerprint}|{where}".encode()).hexdigest()[:32]


def shop_tab(app: gr.Blocks, assistant: Any, store: DialogStore | None, turn_threads: int = 1) -> None:
    """Lay out the shop tab (inside an open gr.Tab) and wire its events, including the app's page load; a tab
    that comes back (a reload, a restarted server) carries on with its stored dialog."""
    state = gr.State(None)
    saved_dialog = gr.BrowserState(None, storage_key="fashion-assistant-dialog",
                                   secret=browser_secret(assistant.catalog.fingerprint, store))
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
                reference_image = thumbnail("Reference", "shop-reference-image")
                with gr.Column(scale=4):
                    reference = gr.Markdown(elem_id="shop-reference")
                    understood = gr.Markdown(elem_id="shop-understood")
            gallery = results_gallery("Results", "shop-gallery")
    outputs = [state, chatbot, gallery, reference_image, reference, understood, status, saved_dialog]
    marks_cleared = gr.Number(0, visible="hidden", elem_id="shop-marks-cleared")
    handlers = ShopHandlers(assistant, store, turn_threads, PageValues([*outputs, message, marks_cleared]))
    hidden = {"api_visibility": "undocumented"}  # the page's own events: callable, not in the API docs
    app.load(handlers.on_load, [state, saved_dialog], outputs, **hidden)
    typed = {"queue": False, "postprocess": False}
    send.click(handlers.on_send, [message, state], [*outputs, message, marks_cleared], api_name="send", **typed)
    message.submit(handlers.on_send, [message, state], [*outputs, message, marks_cleared], **hidden, **typed)
    marks_cleared.change(handlers.clear_mark, None, [gallery], queue=False, show_progress="hidden", **hidden)
    gallery.select(handlers.on_select, [state], outputs, api_name="select")
    photo_button.upload(handlers.on_photo, [photo_button, state], outputs, api_name="photo")
    pick.click(handlers.on_pick, [state], outputs, api_name="pick")
    reset.click(handlers.on_reset, [state], [*outputs, message], api_name="reset")
    chatbot.clear(handlers.on_reset, [state], [*outputs, message], **hidden)
