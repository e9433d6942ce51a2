"""The Gradio app: shop by chatting with the assistant, or watch a simulated shopper find its hidden target."""

from __future__ import annotations

import argparse
import gc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from assistant.api import Assistant
from assistant.core.catalog import SPLITS, Catalog, CatalogError, report_lines
from assistant.core.dialog import PAGE_SIZE
from assistant.core.loaders import load_catalog
from assistant.core.messages import MAX_UPLOAD_BYTES
from assistant.core.storage import cache_dir
from assistant.core.store import describe_store, open_store
from assistant.webapp.layout import CSS, THEME
from assistant.webapp.shop import shop_tab
from assistant.webapp.watch import watch_tab


def default_concurrency() -> int:
    """Events run at once (gradio's queue), and typed turns at once (they skip the queue and wait in order for
    one of this many threads): a turn is mostly ranking on the CPU (the GIL lets one run at a time) and partly the
    store's write, so two per core keep the cores busy while one waits for the disk."""
    return 2 * (os.cpu_count() or 1)


def build_app(assistant: Any, data_dir: str | os.PathLike | None = None, watch_delay: float = 0.8,
              concurrency: int | None = None) -> gr.Blocks:
    """The app over a loaded Assistant: the shop tab and the watch tab; dialogs are stored in `data_dir` (a folder,
    .sqlite file or PostgreSQL URL) when given."""
    require_a_page(assistant.catalog)
    # The catalog's pictures are served from their own folders: gradio neither hashes nor copies them each turn.
    gr.set_static_paths(image_folders(assistant.catalog))
    store = open_store(data_dir, source="app", catalog=assistant.catalog.fingerprint) if data_dir else None
    concurrency = concurrency or default_concurrency()
    with gr.Blocks(title="Fashion assistant", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# Fashion assistant\nDescribe what you want, click an item to say how it should change, "
                    "or upload a photo. Press **This is it** when you find it.", elem_id="title")
        with gr.Tabs():
            with gr.Tab("Shop", id="shop"):
                shop_tab(app, assistant, store, concurrency)
            with gr.Tab("Watch a simulated shopper", id="watch"):
                watch_tab(assistant, watch_delay)
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
    """The app shows a page of PAGE_SIZE items; a smaller catalog is a CatalogError."""
    if len(catalog) < PAGE_SIZE:
        raise CatalogError(f"{catalog.name}: {len(catalog)} usable item(s); the app shows {PAGE_SIZE} a page "
                           f"and needs at least that many")


def launch_app(assistant: Any, data_dir: str | os.PathLike | None = None, host: str = "127.0.0.1",
               port: int = 7860, block: bool = True, quiet: bool = False, **app_options: Any) -> tuple[gr.Blocks, str]:
    """Build and serve the app; with `block=False` it returns (app, local url) and serves from a thread."""
    assistant.warm_up()
    app = build_app(assistant, data_dir, **app_options)
    gc.freeze()  # the loaded model and catalog live as long as the server: a full collection need not walk them
    _, url, _ = app.launch(server_name=host, server_port=port, allowed_paths=image_folders(assistant.catalog),
                           blocked_paths=private_files(assistant.catalog),
                           prevent_thread_lock=not block, quiet=quiet, theme=THEME, css=CSS,
                           max_file_size=MAX_UPLOAD_BYTES, footer_links=["api"], show_error=False)
    return app, url


def serve(model_dir: str | os.PathLike, catalog: str | os.PathLike | Catalog, host: str = "127.0.0.1",
          port: int = 7860, data_dir: str | os.PathLike | None = None, concurrency: int | None = None) -> None:
    """Load a trained model over a catalog and serve the app until interrupted; dialogs go to `data_dir` (a
    folder, .sqlite file or PostgreSQL URL; default the cache's dialogs/)."""
    catalog = catalog if isinstance(catalog, Catalog) else load_catalog(catalog)
    require_a_page(catalog)
    assistant = Assistant.load(model_dir, catalog=catalog)
    if assistant.features.failed:
        print("\n".join(report_lines(assistant.features.report().as_dict(), title="image features")))
    data_dir = data_dir or cache_dir() / "dialogs"
    print(f"Storing dialogs in {describe_store(data_dir)}")
    launch_app(assistant, data_dir, host=host, port=port, concurrency=concurrency)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="a trained model directory")
    parser.add_argument("--catalog", default="demo", help="a catalog folder or file, or 'demo'")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--images-root", help="the folder the catalog's images must lie in (default: its own)")
    parser.add_argument("--data", help="folder for the dialog log (default: the cache's dialogs/)")
    parser.add_argument("--split", choices=SPLITS,
                        help="serve only this split of the catalog (test: the items held out from training)")
    parser.add_argument("--concurrency", type=int,
                        help="events (and typed turns) run at once (default: two per CPU core)")
    args = parser.parse_args(argv)
    serve(args.model, load_catalog(args.catalog, images_root=args.images_root, split=args.split), args.host,
          args.port, args.data, args.concurrency)


if __name__ == "__main__":
    main()
