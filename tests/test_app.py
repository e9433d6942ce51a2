"""The app over HTTP: what shoppers send is handled safely, sessions stay apart, only catalog images are served."""

from __future__ import annotations

import html
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from assistant.core.messages import (
    EMPTY_MESSAGE_PROMPT,
    MAX_MESSAGE_CHARS,
    UploadError,
    clean_message,
    open_upload,
)
from assistant.core.store import read_dialogs
from assistant.webapp import launch_app

REPO = Path(__file__).resolve().parent.parent
# outputs of the /send, /pick and /reset endpoints (the session State is not part of the API)
CHAT, GALLERY, REFERENCE_IMAGE, REFERENCE, UNDERSTOOD, STATUS = range(6)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header declares width x height pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
                     + chunk(b"IEND", b""))
    return path


def chat_texts(chat: list[dict]) -> list[tuple[str, str]]:
    """(role, text) of each chat message as the API returns them."""
    texts = []
    for message in chat:
        content = message["content"]
        parts = content if isinstance(content, list) else [content]
        texts.append((message["role"], "".join(p["text"] if isinstance(p, dict) else str(p) for p in parts)))
    return texts


def gallery_ids(gallery: dict | list) -> list[str]:
    """Item ids on show: each picture is served under its catalog file name (<id>.<ext>)."""
    items = gallery["value"] if isinstance(gallery, dict) else gallery
    return [Path(entry["image"]["orig_name"]).stem for entry in items]


def fetch_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@dataclass
class Served:
    url: str
    data_dir: Path


@pytest.fixture(scope="module")
def served(demo_assistant, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("app-data")
    app, url = launch_app(demo_assistant, data_dir, port=free_port(), block=False, quiet=True, watch_delay=0.0)
    try:
        yield Served(url, data_dir)
    finally:
        app.close()


def new_client(served: Served) -> Client:
    return Client(served.url, verbose=False, download_files=False, analytics_enabled=False)


def sessions_by_first_text(data_dir: Path) -> dict[str, dict]:
    return {d["turns"][0]["text"]: d for d in read_dialogs(data_dir) if d["turns"]}


def test_a_typed_turns_outputs_are_what_gradio_would_send(demo_assistant) -> None:
    """The send event skips gradio's postprocessing (postprocess=False): the values PageValues makes must be the
    ones gradio's components make of the same outputs."""
    import gradio as gr

    from assistant.webapp.layout import PageValues, gallery_value, results_gallery

    items = list(demo_assistant.catalog)[:12]
    with gr.Blocks():
        chat, gallery = gr.Chatbot(), results_gallery("Results", "g")
        note, state = gr.Markdown(), gr.State(None)
    page = PageValues([state, chat, gallery, note])
    history = [{"role": "user", "content": "a red dress"}, {"role": "assistant", "content": "Top match: x."}]
    made = page(("kept", history, gallery_value(items), "  **Understood:** red"))
    assert made[0] == "kept"  # the tab's state passes through to gradio's session store
    assert made[1] == chat.postprocess(history).model_dump()
    assert made[2] == gallery.postprocess(gallery_value(items)).model_dump()
    assert [Path(entry["image"]["path"]) for entry in made[2]] == [item.image_path for item in items]
    assert made[3] == note.postprocess("  **Understood:** red")
    assert page([gr.skip()] * 4) == (gr.skip(),) * 4
    update = page([gr.skip(), gr.skip(), gr.update(value=gallery_value(items[:3]), selected_index=1), gr.skip()])[2]
    assert update["selected_index"] == 1 and len(update["value"]) == 3


# --- what a shopper types or uploads, before any dialog --------------------------------------------------------


def test_clean_message_keeps_text_as_characters() -> None:
    raw = "  <b>red</b>\tdress **now** 👗 赤いドレス\x00\x1b[31m  платье  "
    cleaned = clean_message(raw)
    assert cleaned.text == "<b>red</b> dress **now** 👗 赤いドレス [31m платье"
    assert cleaned.note is None
    assert clean_message("   \n\t ").text == "" and clean_message(None).text == ""


def test_clean_message_cuts_a_huge_message_with_a_note() -> None:
    cleaned = clean_message("longer sleeves please " * 500)
    assert MAX_MESSAGE_CHARS * 0.8 < len(cleaned.text) <= MAX_MESSAGE_CHARS
    assert cleaned.text.startswith("longer sleeves please longer")
    assert not cleaned.text.endswith(" ") and "10,999 characters" in cleaned.note


def test_open_upload_reads_a_photo_and_refuses_what_is_not_one(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGBA", (60, 80), (200, 30, 30, 255)).save(photo)
    image = open_upload(photo)
    assert image.mode == "RGB" and image.size == (60, 80)
    (tmp_path / "text.png").write_text("not a picture")
    with pytest.raises(UploadError, match="not an image"):
        open_upload(tmp_path / "text.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(UploadError, match="empty"):
        open_upload(tmp_path / "empty.jpg")
    with pytest.raises(UploadError, match="too large"):
        open_upload(png_declaring(tmp_path / "bomb.png", 20000, 20000))
    with pytest.raises(UploadError, match="7,000×7,000 pixels"):
        open_upload(png_declaring(tmp_path / "big.png", 7000, 7000))
    truncated = tmp_path / "truncated.jpg"
    Image.new("RGB", (200, 200), "navy").save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(UploadError, match="not an image"):
        open_upload(truncated)


# --- the running app ---------------------------------------------------------------------------------------------


def test_a_request_shows_twelve_items_and_is_logged(served: Served) -> None:
    client = new_client(served)
    out = client.predict("a red dress", api_name="/send")
    shown = gallery_ids(out[GALLERY])
    assert len(shown) == 12 and len(set(shown)) == 12
    assert chat_texts(out[CHAT])[0] == ("user", "a red dress")
    assert "Understood" in out[UNDERSTOOD] and "red" in out[UNDERSTOOD].lower()
    assert out[REFERENCE_IMAGE] is not None and "top result" in out[REFERENCE]
    logged = sessions_by_first_text(served.data_dir)["a red dress"]
    assert logged["turns"][0]["shown"] == shown and logged["turns"][0]["kind"] == "text"


def test_an_empty_message_prompts_and_changes_nothing(served: Served) -> None:
    client = new_client(served)
    client.predict("black trousers", api_name="/send")
    empty = client.predict("   \n ", api_name="/send")
    assert empty[STATUS] == html.escape(EMPTY_MESSAGE_PROMPT, quote=False)
    assert all(value == {"__type__": "update"} for value in empty[:STATUS])  # every other output left as it was
    out = client.predict("shorter", api_name="/send")
    assert [role for role, _ in chat_texts(out[CHAT])] == ["user", "assistant", "user", "assistant"]
    assert len(sessions_by_first_text(served.data_dir)["black trousers"]["turns"]) == 2


def test_a_ten_thousand_character_message_is_cut_with_a_note(served: Served) -> None:
    client = new_client(served)
    out = client.predict("blue " * 2000, api_name="/send")
    said = chat_texts(out[CHAT])[0][1]
    assert len(said) <= MAX_MESSAGE_CHARS and said.startswith("blue blue")
    assert "9,999 characters" in out[STATUS]
    assert len(gallery_ids(out[GALLERY])) == 12


def test_markup_emoji_and_other_scripts_are_shown_as_text(served: Served) -> None:
    client = new_client(served)
    message = "<img src=x onerror=alert(1)> **a** <script>alert('x')</script> 赤いドレス 👗 & платье"
    out = client.predict(message, api_name="/send")
    role, said = chat_texts(out[CHAT])[0]
    assert role == "user" and said == html.escape(message, quote=False)
    assert "<" not in said and ">" not in said
    assert len(gallery_ids(out[GALLERY])) == 12


def test_unusable_uploads_get_a_clear_message_and_change_nothing(served: Served, tmp_path: Path) -> None:
    client = new_client(served)
    (tmp_path / "notes.png").write_text("this is text, not a photo")
    out = client.predict(handle_file(str(tmp_path / "notes.png")), api_name="/photo")
    assert "not an image I can read" in out[STATUS]
    assert all(value == {"__type__": "update"} for value in out[:STATUS])
    out = client.predict(handle_file(str(png_declaring(tmp_path / "bomb.png", 20000, 20000))), api_name="/photo")
    assert "too large" in out[STATUS]
    (tmp_path / "notes.txt").write_text("a text file")
    with pytest.raises(Exception, match="Invalid file type"):  # gradio refuses it before the app sees it
        client.predict(handle_file(str(tmp_path / "notes.txt")), api_name="/photo")


def test_a_photo_starts_a_dialog_about_it(served: Served, demo_assistant, tmp_path: Path) -> None:
    client = new_client(served)
    client.predict("a green coat", api_name="/send")
    item = demo_assistant.catalog.items[11]
    photo = tmp_path / "my-photo.png"
    demo_assistant.catalog.open_image(item).save(photo)
    out = client.predict(handle_file(str(photo)), api_name="/photo")
    assert chat_texts(out[CHAT])[0][0] == "user" and len(out[CHAT]) == 2  # a fresh dialog
    assert item.id in gallery_ids(out[GALLERY])[:3]
    assert "your photo" in out[REFERENCE] and out[REFERENCE_IMAGE] is not None
    out = client.predict("in black", api_name="/send")
    assert [t for r, t in chat_texts(out[CHAT]) if r == "user"][1] == "in black"
    photo_dialogs = [d for d in read_dialogs(served.data_dir) if d["turns"] and d["turns"][0]["kind"] == "photo"]
    assert [[t["kind"] for t in d["turns"]] for d in photo_dialogs] == [["photo", "feedback"]]
    assert photo_dialogs[0]["turns"][1]["reference"] is None  # the words were about the photo


def test_the_server_serves_catalog_images_and_nothing_else(served: Served, demo_assistant) -> None:
    item = demo_assistant.catalog.items[0]
    images = item.image_path.resolve().parent
    base = f"{served.url.rstrip('/')}/gradio_api/file="
    assert fetch_status(base + str(item.image_path.resolve())) == 200
    refused = ["/etc/passwd", str(images / ".." / "catalog.jsonl"), str(images.parent / "catalog.jsonl"),
               str(served.data_dir / "dialogs.sqlite"), str(REPO / "app.py"), str(REPO / "pyproject.toml"),
               "../../../../etc/passwd", "http://127.0.0.1:1/"]
    for path in refused:
        assert fetch_status(base + path) in (403, 404), path


def test_two_sessions_never_share_a_dialog(served: Served) -> None:
    first, second = new_client(served), new_client(served)
    first.predict("a green skirt", api_name="/send")
    second.predict("a white shirt", api_name="/send")
    first_chat = chat_texts(first.predict("in black", api_name="/send")[CHAT])
    second_chat = chat_texts(second.predict("with long sleeves", api_name="/send")[CHAT])
    assert [t for r, t in first_chat if r == "user"] == ["a green skirt", "in black"]
    assert [t for r, t in second_chat if r == "user"] == ["a white shirt", "with long sleeves"]
    logged = sessions_by_first_text(served.data_dir)
    assert [t["text"] for t in logged["a green skirt"]["turns"]] == ["a green skirt", "in black"]
    assert [t["text"] for t in logged["a white shirt"]["turns"]] == ["a white shirt", "with long sleeves"]
    assert logged["a green skirt"]["session"] != logged["a white shirt"]["session"]


def test_feedback_refines_the_top_result_and_this_is_it_logs_the_pick(served: Served) -> None:
    client = new_client(served)
    first = client.predict("a dress", api_name="/send")
    top = gallery_ids(first[GALLERY])[0]
    second = client.predict("in red", api_name="/send")
    assert gallery_ids(second[GALLERY]) != gallery_ids(first[GALLERY])
    assert top not in gallery_ids(second[GALLERY])  # the item talked about is not shown again
    picked = gallery_ids(second[GALLERY])[0]
    out = client.predict(api_name="/pick")
    assert chat_texts(out[CHAT])[-1][0] == "assistant" and "Your pick" in chat_texts(out[CHAT])[-1][1]
    logged = sessions_by_first_text(served.data_dir)["a dress"]
    assert logged["final_pick"] == picked
    assert logged["turns"][1]["reference"] == top and not logged["turns"][1]["clicked"]


def test_reset_starts_a_new_session(served: Served) -> None:
    client = new_client(served)
    client.predict("a navy jacket", api_name="/send")
    out = client.predict(api_name="/reset")
    assert out[CHAT] == [] and len(gallery_ids(out[GALLERY])) == 12 and "Started over" in out[STATUS]
    client.predict("a yellow t-shirt", api_name="/send")
    logged = sessions_by_first_text(served.data_dir)
    assert len(logged["a navy jacket"]["turns"]) == 1 and len(logged["a yellow t-shirt"]["turns"]) == 1
    assert logged["a navy jacket"]["session"] != logged["a yellow t-shirt"]["session"]


def test_watch_mode_plays_turns_against_a_hidden_target(served: Served) -> None:
    client = new_client(served)
    target_id, _, _ = client.predict(api_name="/draw_target")
    job = client.submit("template", target_id, 3, api_name="/watch")
    updates = list(job)
    chat, gallery, plot, status = updates[-1]
    turns_played = sum(1 for role, _ in chat_texts(chat) if role == "user")
    assert 1 <= turns_played <= 3
    assert len(gallery_ids(gallery)) == 12
    assert status.startswith(f"Turn {turns_played}: the target is at rank")
    assert turns_played == 3 or status.endswith("Found it!")
    assert plot is not None


def test_a_killed_server_keeps_every_completed_turn(demo_assistant, demo_model_dir: Path, tmp_path: Path) -> None:
    """SIGKILL the served app in the middle of a dialog: each turn whose answer arrived is in the log."""
    port = free_port()
    command = [sys.executable, str(REPO / "app.py"), "--model", str(demo_model_dir),
               "--catalog", str(demo_assistant.catalog.root), "--port", str(port), "--data", str(tmp_path)]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 180
        while fetch_status_or_none(url) != 200:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the app did not start within 3 minutes"
            time.sleep(0.5)
        client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
        said = ["a black dress", "shorter", "with long sleeves"]
        for text in said:
            client.predict(text, api_name="/send")
        client.submit("in red", api_name="/send")  # in flight when the server dies
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
        server.stderr.close()
    [dialog] = list(read_dialogs(tmp_path))
    assert [t["text"] for t in dialog["turns"]][:3] == said
    assert all(len(t["shown"]) == 12 for t in dialog["turns"])


def fetch_status_or_none(url: str) -> int | None:
    try:
        return fetch_status(url)
    except OSError:
        return None


def test_thumbnails_are_served_from_the_catalog_files_not_copied(served: Served, demo_assistant) -> None:
    out = new_client(served).predict("a red dress", api_name="/send")
    entries = out[GALLERY]["value"] if isinstance(out[GALLERY], dict) else out[GALLERY]
    catalog_files = {str(item.image_path.resolve()) for item in demo_assistant.catalog}
    assert len(entries) == 12
    for entry in entries:  # the url names the catalog file itself, not a copy in gradio's cache
        assert entry["image"]["url"].split("/gradio_api/file=")[-1] in catalog_files
