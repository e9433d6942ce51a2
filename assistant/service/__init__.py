"""The HTTP API server: `serve_api` runs uvicorn (one or more worker processes) over a model, a catalog and a store."""

from __future__ import annotations

import gc
import json
import os

import uvicorn
from fastapi import FastAPI

from assistant.api import Assistant
from assistant.core.catalog import Catalog
from assistant.core.loaders import load_catalog
from assistant.core.storage import cache_dir
from assistant.core.store import describe_store, open_store
from assistant.service.app import create_app

SETTINGS_ENV = "FASHION_ASSISTANT_API_SETTINGS"


def app_from_environment() -> FastAPI:
    """The uvicorn factory each worker process calls: model, catalog and store from $FASHION_ASSISTANT_API_SETTINGS.

    A turn ranks with `threads` torch and faiss threads (default one): a turn is small, so requests run side by
    side instead.
    """
    settings = json.loads(os.environ[SETTINGS_ENV])
    assistant = Assistant.load(settings["model"], catalog=_catalog(settings), progress=False)
    assistant.warm_up()
    store = open_store(settings["store"], source="api", catalog=assistant.catalog.fingerprint)
    app = create_app(assistant, store, threads=settings["threads"], request_threads=settings["request_threads"])
    # the loaded model, catalog and views never die: out of the collector's sight, a full collection no longer walks
    # them (held-out split: ~560k objects, 230 ms with every request waiting; after freeze() well under 1 ms)
    gc.freeze()
    return app


def _catalog(settings: dict) -> Catalog:
    """The served catalog: the source, its images root and, where one is named, only one of its splits."""
    return load_catalog(settings["catalog"], images_root=settings["images_root"], split=settings["split"])


def serve_api(model_dir: str | os.PathLike, catalog: str | os.PathLike, store: str | os.PathLike | None = None,
              host: str = "127.0.0.1", port: int = 8000, workers: int = 1, threads: int = 1,
              split: str | None = None, images_root: str | os.PathLike | None = None,
              request_threads: int | None = None) -> None:
    """Serve the API until interrupted. `store`: a folder, .sqlite file or `postgresql://…` URL (default: the
    cache's dialogs/). `split` serves only that split of the catalog (e.g. `test`, the items held out from
    training). `request_threads`: turns run at once per worker (default: by the store's kind). Every worker loads
    the model (features and index come from the cache after the first)."""
    store = os.fspath(store or cache_dir() / "dialogs")
    print(f"Storing dialogs in {describe_store(store)}; OpenAPI at http://{host}:{port}/docs", flush=True)
    settings = {"model": os.fspath(model_dir), "catalog": os.fspath(catalog), "store": store, "threads": threads,
                "request_threads": request_threads,
                "split": split, "images_root": None if images_root is None else os.fspath(images_root)}
    if workers > 1:
        # the first load computes and caches features and index, so the workers do not all compute them at once
        Assistant.load(model_dir, catalog=_catalog(settings))
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    # keep-alive past a load balancer's idle timeout (60 s is common): the server never closes a connection that
    # a client is about to reuse (that race is a client's ReadError)
    uvicorn.run("assistant.service:app_from_environment", factory=True, host=host, port=port, workers=workers,
                access_log=False, log_level="warning", timeout_graceful_shutdown=5, timeout_keep_alive=75)
