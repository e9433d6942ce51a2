"""The HTTP API (FastAPI): dialogs, items and their images over one Assistant and a dialog store; replicas share
only the store, each keeps a bounded cache of live sessions."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio.to_thread
from cachetools import LRUCache
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from assistant.core.catalog import Item
from assistant.core.messages import MAX_UPLOAD_BYTES, UploadError, clean_message
from assistant.core.store import DialogStore, StoredTurn, TurnConflict
from assistant.service.schemas import (
    ITEM_ID_CHARS,
    DialogOut,
    Health,
    ItemOut,
    Pick,
    PickResult,
    Problem,
    Reply,
    StartDialog,
    TurnResult,
)
from assistant.session import ForeignDialog, ShoppingSession

log = logging.getLogger(__name__)

API_KEY_ENV = "FASHION_ASSISTANT_API_KEY"
JSON_BODY_BYTES = 64 * 1024  # a message is at most 500 characters: any JSON body needs far less
UPLOAD_BODY_BYTES = MAX_UPLOAD_BYTES + 64 * 1024  # a photo, its form fields and the multipart framing
CACHED_SESSIONS = 4096
# Turns run side by side in this many threads, by store; with more than one, the turns they play at once are
# ranked together (BatchingRanker). 32 concurrent dialogs on 2 cores, whole catalog (34,975 items), fpi-cpu model:
# one replica on SQLite, 1 thread 123 turns/s p99 352 ms, 16 threads 224-250 turns/s p99 179-194 ms; two
# replicas on one PostgreSQL, 2 threads 199 turns/s p99 266 ms, 16 threads 305-373 turns/s p99 135-185 ms (32
# threads: no better). Before the batching, a second thread only traded the GIL back and forth on SQLite.
REQUEST_THREADS = {"sqlite": 16, "postgresql": 16}
DIALOG_ID = re.compile(r"[0-9a-f]{32}")
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Problem} for code in (401, 404, 409, 413, 422)}


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit / 1024 / 1024:.2f} MB, the most this endpoint takes")


def _body_limit(scope: dict) -> int:
    """A photo upload (a form posted to /v1/dialogs) may be large; any other body is a little JSON."""
    content_type = dict(scope["headers"]).get(b"content-type", b"")
    upload = scope["path"] == "/v1/dialogs" and content_type.startswith(b"multipart/form-data")
    return UPLOAD_BODY_BYTES if upload else JSON_BODY_BYTES


class BodyLimit:
    """ASGI middleware: a body over its endpoint's limit gets 413 before it is parsed (a declared length at once,
    the body drained unread; a chunked body when it crosses the limit)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _body_limit(scope)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            while (await receive()).get("more_body"):  # drained, so the client reads the answer, not a reset
                pass
            message = "the Content-Length header is not a number" if not declared.isdigit() \
                else f"the request body is {int(declared) / 1024 / 1024:.2f} MB; this endpoint takes at most " \
                     f"{limit / 1024 / 1024:.2f} MB" + (" (photos up to 10 MB)" if limit == UPLOAD_BODY_BYTES else "")
            await JSONResponse({"detail": message}, status_code=413 if declared.isdigit() else 400)(
                scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


@dataclass
class LiveSession:
    """A cached session and the lock that lets one request at a time move it."""

    session: ShoppingSession
    lock: threading.Lock = field(default_factory=threading.Lock)


class LiveSessions:
    """A replica's sessions: a bounded LRU cache over the store, which alone holds the truth.

    A session not in the cache (evicted, or started on another replica) is rebuilt from its stored turns; a
    cached one first plays the turns other replicas stored since (`catch_up`), so every replica continues
    every dialog exactly where it is.
    """

    def __init__(self, assistant: Any, store: DialogStore, size: int = CACHED_SESSIONS, threads: int = 1) -> None:
        self.assistant, self.store, self.threads = assistant, store, threads
        self._cache: LRUCache = LRUCache(maxsize=size)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cache)

    def new(self) -> LiveSession:
        live = LiveSession(ShoppingSession(self.assistant, self.store, threads=self.threads))
        with self._lock:
            self._cache[live.session.id] = live
        return live

    def get(self, dialog_id: str) -> LiveSession:
        """The dialog's live session (HTTPException 404 when no such dialog is stored)."""
        with self._lock:
            live = self._cache.get(dialog_id)
        if live is not None:
            return live
        try:
            session = ShoppingSession.resume(self.assistant, self.store, dialog_id, self.threads) \
                if DIALOG_ID.fullmatch(dialog_id) else None
        except ForeignDialog as error:
            raise HTTPException(409, str(error)) from error
        if session is None:
            raise HTTPException(404, f"no dialog {dialog_id!r}; start one with POST /v1/dialogs")
        with self._lock:
            return self._cache.setdefault(dialog_id, LiveSession(session))

    def forget(self, dialog_id: str) -> None:
        with self._lock:
            self._cache.pop(dialog_id, None)


def item_views(assistant: Any) -> list[dict[str, Any]]:
    """Every catalog row as the API shows it (made once: attributes with predicted-vs-labelled flags)."""
    predicted = assistant.predicted
    return [{"id": item.id, "title": item.title, "category": item.category,
             "attributes": {name: {"value": value, "predicted": (item.id, name) in predicted}
                            for name, value in attributes.items()},
             "image_url": f"/v1/items/{item.id}/image" if item.image_path else None}
            for item, attributes in zip(assistant.catalog, assistant.attributes, strict=True)]


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _validation_message(error: RequestValidationError | ValidationError) -> tuple[int, str]:
    """(status, one readable line) for a body that failed validation; malformed JSON is a 400."""
    problems = error.errors()
    if any(problem.get("type") == "json_invalid" for problem in problems):
        context = problems[0].get("ctx", {}).get("error", "")
        return 400, f"the body is not valid JSON ({context})" if context else "the body is not valid JSON"
    parts = []
    for problem in problems:
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body") or "body"
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    return 422, "; ".join(parts)


def create_app(assistant: Any, store: DialogStore, api_key: str | None = None,
               cached_sessions: int = CACHED_SESSIONS, threads: int = 1,
               request_threads: int | None = None) -> FastAPI:
    """The API over a loaded Assistant and a store. With `api_key` (default: $FASHION_ASSISTANT_API_KEY) every
    POST needs it in an `X-API-Key` header. Turns run in `request_threads` threads (default: by the store's kind,
    REQUEST_THREADS), each ranking with `threads` torch threads."""
    request_threads = request_threads or REQUEST_THREADS.get(store.kind, 1)
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    catalog = assistant.catalog
    views = item_views(assistant)
    # each item as the JSON a turn answers with, encoded once: a turn's answer is spliced from them, not validated
    # and encoded by pydantic per request (a sixth of a served turn's time); tests check it against TurnResult
    views_json = [json.dumps(view, ensure_ascii=False, separators=(",", ":")) for view in views]
    # with several request threads, the turns they play at once are ranked together (Assistant.batching)
    sessions = LiveSessions(assistant.batching() if request_threads > 1 else assistant, store, cached_sessions,
                            threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = request_threads
        yield

    app = FastAPI(title="fashion-assistant", version="1", lifespan=lifespan,
                  description="A dialog-based fashion shopping assistant: start a dialog from words, an item or a "
                              "photo, then say how the items should change. Every turn is stored before it is "
                              "answered; any replica over the same store continues any dialog.")
    app.add_middleware(BodyLimit)
    app.state.sessions = sessions

    def view(item: Item) -> dict[str, Any]:
        return views[catalog.index_of(item.id)]

    async def write_access(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if api_key is not None and not secrets.compare_digest((x_api_key or "").encode(), api_key.encode()):
            raise HTTPException(401, "this server needs an API key for writes: send it in the X-API-Key header")

    def message(raw: str | None, required: bool) -> str | None:
        text = clean_message(raw).text
        if required and not text:
            raise HTTPException(422, "text: the message is empty; say what you are looking for or how it should "
                                     "change")
        return text or None

    def known_item(item_id: str | None, field_name: str) -> str | None:
        if item_id is not None and item_id not in catalog:
            raise HTTPException(422, f"{field_name}: no item {item_id!r} in the catalog")
        return item_id

    def turn_result(session: ShoppingSession, note: str | None = None) -> Response:
        """A TurnResult as JSON: the turn's fields, then its items' encoded views."""
        reference = session.reference
        head = json.dumps({"dialog_id": session.id, "turn": session.turns, "understood": session.understood,
                           "reference": reference.id if reference else None, "note": note},
                          ensure_ascii=False, separators=(",", ":"))
        items = ",".join(views_json[catalog.index_of(item.id)] for item in session.results)
        return Response(f'{head[:-1]},"items":[{items}]}}', media_type="application/json")

    def stored_items(ids: list[str]) -> list[dict[str, Any]]:
        return [views[catalog.index_of(item_id)] for item_id in ids if item_id in catalog]

    def start(text: str | None, item_id: str | None, upload: tuple[str, bytes] | None) -> Response:
        live = sessions.new()
        session = live.session
        with live.lock:
            try:
                if upload is not None:
                    with tempfile.NamedTemporaryFile(suffix=os.path.splitext(upload[0])[1][:10]) as file:
                        file.write(upload[1])
                        file.flush()
                        outcome = session.photo(file.name, text)
                elif text:
                    outcome = session.say(text, reference=item_id)
                else:
                    outcome = session.click(item_id)
            except UploadError as error:
                sessions.forget(session.id)
                raise HTTPException(422, f"image: {error}") from error
            except ValueError as error:  # e.g. an assistant without a backbone cannot read photos
                sessions.forget(session.id)
                raise HTTPException(422, str(error)) from error
            return turn_result(session, outcome.note)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return _problem(*_validation_message(error))

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, error: BodyTooLarge) -> JSONResponse:
        return _problem(413, str(error))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _problem(500, "the server could not answer this request; it has been logged")

    @app.post("/v1/dialogs", response_model=TurnResult, responses=ERRORS, dependencies=[Depends(write_access)],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": StartDialog.model_json_schema()},
                  "multipart/form-data": {"schema": {"type": "object", "properties": {
                      "image": {"type": "string", "format": "binary", "description": "a photo, at most 10 MB"},
                      "text": {"type": "string"}, "item_id": {"type": "string"}}}}}}})
    async def start_dialog(request: Request) -> Response:
        """Start a dialog from `text`, an `item_id`, or both (JSON), or from an `image` upload with optional
        `text` (multipart form). Answers the first page of items."""
        upload = None
        if request.headers.get("content-type", "").startswith(("multipart/form-data",
                                                                "application/x-www-form-urlencoded")):
            form = await request.form(max_files=1, max_fields=4)
            unknown = set(form) - {"image", "text", "item_id"}
            if unknown:
                raise HTTPException(422, f"unknown form fields: {', '.join(sorted(unknown))}")
            image = form.get("image")
            if image is not None and not isinstance(image, UploadFile):
                raise HTTPException(422, "image: send the photo as a file part (curl -F image=@photo.jpg)")
            if image is not None:
                upload = (image.filename or "", await image.read())
            try:
                body = StartDialog(text=form.get("text"), item_id=form.get("item_id"))
            except ValidationError as error:
                raise HTTPException(*_validation_message(error)) from error
        else:
            try:
                body = StartDialog.model_validate_json(await request.body())
            except ValidationError as error:
                raise HTTPException(*_validation_message(error)) from error
        text = message(body.text, required=False)
        item_id = known_item(body.item_id, "item_id")
        if upload is not None and item_id is not None:
            raise HTTPException(422, "start from an item or from a photo, not both")
        if upload is None and item_id is None and text is None:
            raise HTTPException(422, "say what you are looking for (text), or start from an item_id or an image")
        return await run_in_threadpool(start, text, item_id, upload)

    @app.post("/v1/dialogs/{dialog_id}/turns", response_model=TurnResult, responses=ERRORS,
              dependencies=[Depends(write_access)])
    async def reply(dialog_id: Annotated[str, Path(max_length=64)], body: Reply) -> Response:
        """The shopper's next message: how the wanted item differs from `reference` (default the top result)."""
        text = message(body.text, required=True)
        reference = known_item(body.reference, "reference")
        return await run_in_threadpool(play_turn, dialog_id, text, reference)

    def play_turn(dialog_id: str, text: str, reference: str | None) -> Response:
        live = sessions.get(dialog_id)
        with live.lock:
            session = live.session
            try:
                session.catch_up()
                outcome = session.say(text, reference=reference)
            except TurnConflict as error:
                raise HTTPException(409, f"dialog {dialog_id} moved on while this turn was played (another "
                                         "request stored its turn first); GET it and send the turn again") from error
            return turn_result(session, outcome.note)

    @app.post("/v1/dialogs/{dialog_id}/pick", response_model=PickResult, responses=ERRORS,
              dependencies=[Depends(write_access)])
    def pick(dialog_id: Annotated[str, Path(max_length=64)], body: Pick | None = None) -> dict[str, Any]:
        """"This is it": the shopper's final choice, `item_id` or else the current top result."""
        item_id = known_item(body.item_id if body else None, "item_id")
        live = sessions.get(dialog_id)
        with live.lock:
            live.session.catch_up()
            chosen = live.session.pick(item_id)
        return {"dialog_id": dialog_id, "picked": view(chosen)}

    @app.get("/v1/dialogs/{dialog_id}", response_model=DialogOut, responses=ERRORS)
    def get_dialog(dialog_id: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
        """The dialog as stored: every turn with the items it showed, and the final pick."""
        stored = store.dialog(dialog_id) if DIALOG_ID.fullmatch(dialog_id) else None
        if stored is None:
            raise HTTPException(404, f"no dialog {dialog_id!r}")

        def turn(stored_turn: StoredTurn) -> dict[str, Any]:
            return {"turn": stored_turn.turn, "kind": stored_turn.kind, "text": stored_turn.text,
                    "reference": stored_turn.reference, "items": stored_items(stored_turn.shown),
                    "understood": stored_turn.understood}

        picked = stored_items([stored.final_pick]) if stored.final_pick else []
        return {"dialog_id": dialog_id, "turns": [turn(t) for t in stored.turns], "picked": (picked or [None])[0]}

    @app.get("/v1/items/{item_id}", response_model=ItemOut, responses=ERRORS)
    def get_item(item_id: Annotated[str, Path(max_length=ITEM_ID_CHARS)]) -> dict[str, Any]:
        """One catalog item: title, category, attributes (predicted or labelled) and its image URL."""
        if item_id not in catalog:
            raise HTTPException(404, f"no item {item_id!r} in the catalog")
        return view(catalog[item_id])

    @app.get("/v1/items/{item_id}/image", response_class=FileResponse, responses=ERRORS)
    def get_item_image(item_id: Annotated[str, Path(max_length=ITEM_ID_CHARS)]) -> FileResponse:
        """The item's catalog image (only catalog images: the id is looked up, never used as a path)."""
        item = catalog[item_id] if item_id in catalog else None
        if item is None or item.image_path is None or not item.image_path.is_file():
            raise HTTPException(404, f"no image for item {item_id!r} in the catalog")
        return FileResponse(item.image_path)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Problem}})
    def healthz() -> dict[str, Any]:
        """Whether this replica is serving: its catalog, and a read from the store."""
        try:
            store.turns("", since=0)
        except Exception as error:  # any database failure: the load balancer should stop sending here
            raise HTTPException(503, f"the dialog store is not answering: {type(error).__name__}") from error
        return {"status": "ok", "items": len(catalog), "catalog": catalog.fingerprint, "store": store.kind,
                "cached_dialogs": len(sessions)}

    return app
