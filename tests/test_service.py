"""The HTTP API: dialogs, items and images over the tiny model; bad input gets a clear 4xx, never a 500; replicas
(uvicorn processes) on one PostgreSQL continue each other's dialogs, and a SIGKILLed replica loses no completed
turn, on PostgreSQL and on SQLite."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from assistant.core.store import open_store
from assistant.service.app import create_app
from assistant.service.schemas import TurnResult
from assistant.session import ShoppingSession

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(demo_assistant, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store = open_store(tmp_path_factory.mktemp("api-store"), source="api", catalog=demo_assistant.catalog.fingerprint)
    with TestClient(create_app(demo_assistant, store, api_key=""), raise_server_exceptions=False) as test_client:
        yield test_client
    store.close()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_clear_4xx(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and words in detail and "Traceback" not in response.text


# --- what a shop does -------------------------------------------------------------------------------------------


def test_a_dialog_over_http_starts_refines_reads_back_and_picks(client: TestClient, demo_assistant) -> None:
    started = client.post("/v1/dialogs", json={"text": "a red dress for women"})
    assert started.status_code == 200, started.text
    body = started.json()
    # a turn's answer is spliced from encoded item views: it must be exactly a TurnResult, every field, no other
    assert TurnResult.model_validate(body).model_dump(mode="json") == body
    assert started.headers["content-type"] == "application/json"
    dialog_id, items = body["dialog_id"], body["items"]
    assert len(items) == 12 and body["turn"] == 1 and body["reference"] == items[0]["id"]
    first = demo_assistant.catalog[items[0]["id"]]
    assert items[0]["title"] == first.title and items[0]["image_url"] == f"/v1/items/{first.id}/image"
    assert {name: value["value"] for name, value in items[0]["attributes"].items()} == \
        demo_assistant.attributes[demo_assistant.catalog.index_of(first.id)]
    assert all(isinstance(v["predicted"], bool) for item in items for v in item["attributes"].values())
    refined = client.post(f"/v1/dialogs/{dialog_id}/turns", json={"text": "in blue", "reference": items[3]["id"]})
    assert refined.status_code == 200 and refined.json()["turn"] == 2
    assert TurnResult.model_validate(refined.json()).model_dump(mode="json") == refined.json()
    assert items[3]["id"] not in [item["id"] for item in refined.json()["items"]]  # talked about: not shown again
    again = client.post(f"/v1/dialogs/{dialog_id}/turns", json={"text": "shorter"}).json()
    stored = client.get(f"/v1/dialogs/{dialog_id}").json()
    assert [(t["text"], t["reference"]) for t in stored["turns"]] == [
        ("a red dress for women", None), ("in blue", items[3]["id"]),
        ("shorter", refined.json()["items"][0]["id"])]
    assert [item["id"] for item in stored["turns"][-1]["items"]] == [item["id"] for item in again["items"]]
    assert stored["picked"] is None
    picked = client.post(f"/v1/dialogs/{dialog_id}/pick", json={"item_id": again["items"][2]["id"]})
    assert picked.json()["picked"]["id"] == again["items"][2]["id"]
    assert client.get(f"/v1/dialogs/{dialog_id}").json()["picked"]["id"] == again["items"][2]["id"]
    top = client.post(f"/v1/dialogs/{dialog_id}/pick")  # no body: the current top result
    assert top.status_code == 200 and top.json()["picked"]["id"] == again["items"][0]["id"]


def test_dialogs_start_from_an_item_or_a_photo(client: TestClient, demo_assistant) -> None:
    item = demo_assistant.catalog.items[11]
    by_item = client.post("/v1/dialogs", json={"item_id": item.id}).json()
    assert by_item["items"][0]["id"] == item.id and by_item["reference"] == item.id
    photo = png_bytes(demo_assistant.catalog.open_image(demo_assistant.catalog.items[7]))
    by_photo = client.post("/v1/dialogs", files={"image": ("me.png", photo, "image/png")}, data={"text": "in red"})
    assert by_photo.status_code == 200, by_photo.text
    turns = client.get(f"/v1/dialogs/{by_photo.json()['dialog_id']}").json()["turns"]
    assert [(t["kind"], t["text"], t["reference"]) for t in turns] == [("photo", "in red", None)]
    alone = client.post("/v1/dialogs", files={"image": ("me.png", photo, "image/png")}).json()
    assert alone["reference"] is None  # the next turn is about the photo
    assert demo_assistant.catalog.items[7].id in [i["id"] for i in alone["items"][:3]]


def test_items_images_health_and_the_openapi_page(client: TestClient, demo_assistant) -> None:
    item = demo_assistant.catalog.items[3]
    assert client.get(f"/v1/items/{item.id}").json()["title"] == item.title
    image = client.get(f"/v1/items/{item.id}/image")
    assert image.status_code == 200 and image.content == item.image_path.read_bytes()
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["items"] == len(demo_assistant.catalog) and health["store"] == "sqlite"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/v1/dialogs", "/v1/dialogs/{dialog_id}/turns", "/v1/dialogs/{dialog_id}/pick",
                          "/v1/dialogs/{dialog_id}", "/v1/items/{item_id}", "/v1/items/{item_id}/image", "/healthz"}
    assert "multipart/form-data" in paths["/v1/dialogs"]["post"]["requestBody"]["content"]


# --- bad input: a clear 4xx each, never a 500 or a traceback ------------------------------------------------------


def test_empty_and_huge_messages_are_refused(client: TestClient) -> None:
    assert_clear_4xx(client.post("/v1/dialogs", json={"text": ""}), 422, "say what you are looking for")
    assert_clear_4xx(client.post("/v1/dialogs", json={"text": " \n\t\x00 "}), 422, "say what you are looking for")
    dialog_id = client.post("/v1/dialogs", json={"text": "a coat"}).json()["dialog_id"]
    assert_clear_4xx(client.post(f"/v1/dialogs/{dialog_id}/turns", json={"text": "   "}), 422, "empty")
    assert_clear_4xx(client.post(f"/v1/dialogs/{dialog_id}/turns", json={"text": "a" * 501}), 422,
                     "at most 500 characters")
    huge = "longer " * 15000  # 105 kB
    assert_clear_4xx(client.post("/v1/dialogs", json={"text": huge}), 413, "at most 0.06 MB")
    assert_clear_4xx(client.post(f"/v1/dialogs/{dialog_id}/turns", json={"text": huge}), 413, "at most 0.06 MB")
    assert_clear_4xx(client.post("/v1/dialogs", files={"image": ("x.png", b"", "image/png")}, data={"text": huge}),
                     422, "at most 500 characters")
    assert len(client.get(f"/v1/dialogs/{dialog_id}").json()["turns"]) == 1  # nothing refused was stored


def test_unknown_dialog_and_item_ids_are_404_or_422(client: TestClient) -> None:
    for dialog_id in ("0" * 32, "not-a-dialog", "x" * 64):
        assert_clear_4xx(client.post(f"/v1/dialogs/{dialog_id}/turns", json={"text": "in red"}), 404, "no dialog")
        assert_clear_4xx(client.post(f"/v1/dialogs/{dialog_id}/pick"), 404, "no dialog")
        assert_clear_4xx(client.get(f"/v1/dialogs/{dialog_id}"), 404, "no dialog")
    assert_clear_4xx(client.get("/v1/items/no-such-item"), 404, "no item 'no-such-item'")
    assert_clear_4xx(client.get("/v1/items/no-such-item/image"), 404, "no image")
    assert_clear_4xx(client.post("/v1/dialogs", json={"item_id": "nope"}), 422, "item_id: no item 'nope'")
    dialog_id = client.post("/v1/dialogs", json={"text": "a shirt"}).json()["dialog_id"]
    assert_clear_4xx(client.post(f"/v1/dialogs/{dialog_id}/turns", json={"text": "in red", "reference": "nope"}),
                     422, "reference: no item 'nope'")
    assert_clear_4xx(client.post(f"/v1/dialogs/{dialog_id}/pick", json={"item_id": "nope"}), 422, "no item")


def test_uploads_that_are_not_photos_or_too_large_are_refused(client: TestClient, demo_assistant) -> None:
    assert_clear_4xx(client.post("/v1/dialogs", files={"image": ("notes.png", b"not a picture", "image/png")}),
                     422, "not an image I can read")
    assert_clear_4xx(client.post("/v1/dialogs", files={"image": ("empty.jpg", b"", "image/jpeg")}), 422, "empty")
    fifty_mb = b"\xff\xd8\xff" + bytes(50 * 1024 * 1024)
    assert_clear_4xx(client.post("/v1/dialogs", files={"image": ("big.jpg", fifty_mb, "image/jpeg")}), 413,
                     "photos up to 10 MB")
    assert_clear_4xx(client.post("/v1/dialogs", data={"image": "just text"}), 422, "as a file part")
    photo = png_bytes(Image.new("RGB", (40, 60), "navy"))
    assert_clear_4xx(client.post("/v1/dialogs", files={"image": ("p.png", photo, "image/png")},
                                 data={"item_id": demo_assistant.catalog.items[0].id}), 422, "not both")
    assert_clear_4xx(client.post("/v1/dialogs", files={"image": ("p.png", photo, "image/png")},
                                 data={"colour": "red"}), 422, "unknown form fields: colour")


def test_path_traversal_image_ids_never_reach_a_file(client: TestClient) -> None:
    for path in ("/v1/items/..%2F..%2F..%2Fetc%2Fpasswd/image", "/v1/items/%2e%2e/image",
                 "/v1/items/..%5C..%5Cpyproject.toml/image", "/v1/items/%2Fetc%2Fpasswd/image",
                 "/v1/items/../../../../etc/passwd", "/v1/items/" + "a" * 300 + "/image"):
        response = client.get(path)
        assert response.status_code in (404, 422), (path, response.status_code)
        assert b"root:" not in response.content and b"[project]" not in response.content


def test_malformed_json_and_wrong_shapes_are_refused(client: TestClient) -> None:
    assert_clear_4xx(client.post("/v1/dialogs", content=b'{"text": "a dress"', headers={
        "content-type": "application/json"}), 400, "not valid JSON")
    assert_clear_4xx(client.post("/v1/dialogs", content=b"", headers={"content-type": "application/json"}), 400,
                     "not valid JSON")
    assert_clear_4xx(client.post("/v1/dialogs", json={"text": 42}), 422, "text: ")
    assert_clear_4xx(client.post("/v1/dialogs", json=["a dress"]), 422, "")
    assert_clear_4xx(client.post("/v1/dialogs", json={"txt": "a dress"}), 422, "txt: Extra inputs")
    dialog_id = client.post("/v1/dialogs", json={"text": "a hat"}).json()["dialog_id"]
    assert_clear_4xx(client.post(f"/v1/dialogs/{dialog_id}/turns", content=b"{oops", headers={
        "content-type": "application/json"}), 400, "not valid JSON")
    assert_clear_4xx(client.post(f"/v1/dialogs/{dialog_id}/turns", json={}), 422, "text: Field required")


def test_writes_need_the_api_key_when_one_is_set(demo_assistant, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FASHION_ASSISTANT_API_KEY", "s3cret")
    with open_store(tmp_path) as store, TestClient(create_app(demo_assistant, store)) as keyed:
        assert_clear_4xx(keyed.post("/v1/dialogs", json={"text": "a dress"}), 401, "X-API-Key")
        assert_clear_4xx(keyed.post("/v1/dialogs", json={"text": "a dress"}, headers={"X-API-Key": "guess"}), 401,
                         "API key")
        started = keyed.post("/v1/dialogs", json={"text": "a dress"}, headers={"X-API-Key": "s3cret"})
        assert started.status_code == 200
        assert keyed.get(f"/v1/dialogs/{started.json()['dialog_id']}").status_code == 200  # reads stay open
        assert keyed.get("/healthz").status_code == 200


# --- replicas: real uvicorn processes over one store --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(assistant, location: str, port: int) -> None:
    store = open_store(location, source="api", catalog=assistant.catalog.fingerprint)
    uvicorn.run(create_app(assistant, store), host="127.0.0.1", port=port, log_level="warning")


def wait_healthy(url: str, alive: Callable[[], bool], seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert alive(), "the replica died while starting"
        assert time.monotonic() < deadline, f"{url} did not start in {seconds} s"
        time.sleep(0.2)


@pytest.fixture
def replicas(demo_assistant, forked) -> Iterator[Callable[[str], str]]:
    """replicas(location) -> the URL of a new API replica (a forked uvicorn process) over that store."""
    started = []

    def start(location: str) -> str:
        port = free_port()
        process = forked(_serve, demo_assistant, location, port)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process.is_alive)
        return url

    start.processes = started
    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(timeout=30)


MESSAGES = ["a black dress for women", "shorter", "with long sleeves", "not black", "in red", "for the summer"]


def ids(body: dict) -> list[str]:
    return [item["id"] for item in body["items"]]


def test_two_replicas_on_one_postgresql_continue_each_others_dialogs(demo_assistant, replicas, postgres_url) -> None:
    """Turns alternate between two replicas; every answer equals the one dialog played in one process."""
    one, two = replicas(postgres_url), replicas(postgres_url)
    reference = ShoppingSession(demo_assistant)
    with httpx.Client(timeout=60) as http:
        started = http.post(f"{one}/v1/dialogs", json={"text": MESSAGES[0]}).json()
        reference.say(MESSAGES[0])
        assert ids(started) == [item.id for item in reference.results]
        dialog_id = started["dialog_id"]
        for turn, text in enumerate(MESSAGES[1:], start=1):
            replica = (one, two)[turn % 2]  # two, one, two, ...: each replica has to catch up on the other's turn
            answer = http.post(f"{replica}/v1/dialogs/{dialog_id}/turns", json={"text": text})
            assert answer.status_code == 200, answer.text
            reference.say(text)
            assert ids(answer.json()) == [item.id for item in reference.results]
            assert answer.json()["understood"] == reference.understood
        assert http.get(f"{one}/v1/dialogs/{dialog_id}").json() == http.get(f"{two}/v1/dialogs/{dialog_id}").json()
        assert len(http.get(f"{two}/v1/dialogs/{dialog_id}").json()["turns"]) == len(MESSAGES)


def _load_until_killed(url: str, dialogs: int, completed: dict[str, list[tuple[str, list[str]]]],
                       stop: threading.Event) -> None:
    """`dialogs` shoppers in threads, each starting dialogs and refining them until the server goes away; every
    answered turn is recorded in `completed` (dialog id -> [(text, shown ids)])."""
    def shopper(n: int) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    body = http.post(f"{url}/v1/dialogs", json={"text": f"a dress number {n}"}).json()
                    completed[body["dialog_id"]] = [(f"a dress number {n}", ids(body))]
                    for text in MESSAGES[1:]:
                        answer = http.post(f"{url}/v1/dialogs/{body['dialog_id']}/turns", json={"text": text})
                        completed[body["dialog_id"]].append((text, ids(answer.json())))
                except (httpx.TransportError, ValueError):
                    return

    threads = [threading.Thread(target=shopper, args=(n,)) for n in range(dialogs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


def _kill_mid_load(replicas, location: str) -> tuple[dict, str]:
    url = replicas(location)
    process = replicas.processes[-1]
    completed: dict[str, list[tuple[str, list[str]]]] = {}
    stop = threading.Event()
    load = threading.Thread(target=_load_until_killed, args=(url, 4, completed, stop))
    load.start()
    deadline = time.monotonic() + 120
    while sum(len(turns) for turns in completed.values()) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # requests are in flight
    process.join(timeout=30)
    stop.set()
    load.join(timeout=90)
    return completed, url


def assert_every_completed_turn_stored(completed: dict, location: str) -> None:
    assert sum(len(turns) for turns in completed.values()) >= 30
    with open_store(location) as store:
        for dialog_id, turns in completed.items():
            stored = store.turns(dialog_id)
            assert [(t.text, t.shown) for t in stored[: len(turns)]] == [(text, shown) for text, shown in turns]


def test_a_sigkilled_replica_loses_no_completed_turn_on_postgresql(replicas, postgres_url) -> None:
    completed, _ = _kill_mid_load(replicas, postgres_url)
    assert_every_completed_turn_stored(completed, postgres_url)
    survivor = replicas(postgres_url)  # another replica carries on with a dialog the dead one served
    dialog_id, turns = max(completed.items(), key=lambda entry: len(entry[1]))
    answer = httpx.post(f"{survivor}/v1/dialogs/{dialog_id}/turns", json={"text": "in green"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["turn"] >= len(turns) + 1


def test_a_sigkilled_server_loses_no_completed_turn_on_sqlite(replicas, tmp_path: Path) -> None:
    completed, _ = _kill_mid_load(replicas, str(tmp_path))
    assert_every_completed_turn_stored(completed, str(tmp_path))
    restarted = replicas(str(tmp_path))
    dialog_id, turns = max(completed.items(), key=lambda entry: len(entry[1]))
    answer = httpx.post(f"{restarted}/v1/dialogs/{dialog_id}/turns", json={"text": "in green"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["turn"] >= len(turns) + 1


def test_the_api_command_serves_and_stores_in_sqlite(demo_model_dir: Path, demo_assistant, tmp_path: Path) -> None:
    """`fashion-assistant api` as a shop runs it: a dialog over HTTP, each turn in the --store; `--split test`
    serves only the held-out items."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "assistant", "api", "--model", str(demo_model_dir),
                               "--catalog", str(demo_assistant.catalog.root), "--store", str(tmp_path),
                               "--port", str(port), "--split", "test"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    held_out = {item.id for item in demo_assistant.catalog.split("test")}
    trained_on = next(item.id for item in demo_assistant.catalog.split("train"))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, lambda: server.poll() is None)
        with httpx.Client(timeout=60) as http:
            opened = http.post(f"{url}/v1/dialogs", json={"text": "a green coat"}).json()
            dialog_id = opened["dialog_id"]
            shown = http.post(f"{url}/v1/dialogs/{dialog_id}/turns", json={"text": "longer"}).json()["items"]
            assert {item["id"] for item in opened["items"] + shown} <= held_out
            assert http.get(f"{url}/v1/items/{trained_on}").status_code == 404
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        server.stderr.close()
    with open_store(tmp_path) as store:
        assert [t.text for t in store.turns(dialog_id)] == ["a green coat", "longer"]
        assert store.dialog(dialog_id).source == "api"
