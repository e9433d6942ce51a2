"""What both tabs of the app share: the theme and style, the chat options, text escaping and the results gallery."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components.gallery import GalleryData, GalleryImage
from gradio.data_classes import GradioModel, GradioRootModel, ImageData
from gradio_client import utils as client_utils

from assistant.core.catalog import Item
from assistant.core.messages import item_caption

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


def gallery_value(items: Sequence[Item]) -> list[tuple[str, str]]:
    return [(str(item.image_path), item_caption(item)) for item in items]


def gallery_update(items: Sequence[Item], selected: int | None = None, shown: int | None = -1
                   ) -> dict[str, Any] | list[tuple[str, str]]:
    """New results with the selection `selected` (None: cleared), so an old click is not shown on new items.

    The page keeps its selection when only new pictures arrive, so when `shown` (the selection the page has)
    already is `selected`, only the pictures are sent: an update of the selection makes gradio rebuild the
    component's config, a tenth of a served turn. The default `shown` always sends the selection.
    """
    if selected == shown:
        return gallery_value(items)
    return gr.update(value=gallery_value(items), selected_index=selected)


def gallery_data(value: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Pictures and captions as the page reads a gallery's value (what gr.Gallery.postprocess makes of catalog
    files, without its thread pool per update)."""
    return GalleryData(root=[GalleryImage(image=ImageData(path=path, orig_name=Path(path).name,
                                                          mime_type=client_utils.get_mimetype(path)), caption=caption)
                             for path, caption in value]).model_dump()


class PageValues:
    """An event's outputs made into what the page reads, in the handler's thread, for an event registered with
    `postprocess=False`: gradio's own postprocessing hops to a thread per output, checks every picture's path
    twice and starts a thread pool per gallery update, most of a served turn's time besides the ranking."""

    def __init__(self, outputs: Sequence[gr.components.Component]) -> None:
        self.outputs = list(outputs)

    def __call__(self, values: Sequence[Any]) -> tuple:
        return tuple(self.value(component, value) for component, value in zip(self.outputs, values, strict=True))

    def value(self, component: gr.components.Component, value: Any) -> Any:
        if isinstance(value, dict) and value.get("__type__") == "update":  # gr.skip(), or new properties
            return {**value, "value": self.value(component, value["value"])} if "value" in value else value
        if component.stateful:
            return value
        if isinstance(component, gr.Gallery):  # the results: catalog pictures and captions
            return gallery_data(value)
        shown = component.postprocess(value)
        return shown.model_dump() if isinstance(shown, GradioModel | GradioRootModel) else shown


def results_gallery(label: str, elem_id: str) -> gr.Gallery:
    """A six-column gallery of result pictures with their captions, without gradio's preview or buttons."""
    return gr.Gallery(label=label, show_label=False, columns=6, height="auto", object_fit="contain",
                      allow_preview=False, elem_id=elem_id, elem_classes="results", buttons=[])


def thumbnail(label: str, elem_id: str) -> gr.Image:
    """A small picture beside its description (the shop's reference, the watch tab's hidden target)."""
    return gr.Image(label=label, show_label=False, interactive=False, height=120, width=100, buttons=[], scale=0,
                    min_width=100, elem_id=elem_id, elem_classes="reference-thumb")
