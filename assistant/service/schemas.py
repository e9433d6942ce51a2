"""The HTTP API's request and response bodies (pydantic models, shown in the OpenAPI page at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from assistant.core.messages import MAX_MESSAGE_CHARS

ITEM_ID_CHARS = 200


class Body(BaseModel):
    """A request body: unknown fields are refused, so a misspelt field is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class StartDialog(Body):
    """Start from words, a catalog item, or both (the words say how the wanted item differs from it)."""

    text: str | None = Field(None, max_length=MAX_MESSAGE_CHARS, examples=["a red floral dress for women"])
    item_id: str | None = Field(None, max_length=ITEM_ID_CHARS, examples=["15970"])


class Reply(Body):
    """How the wanted item differs from `reference` (an item id; default the current top result)."""

    text: str = Field(max_length=MAX_MESSAGE_CHARS, examples=["like this but in blue"])
    reference: str | None = Field(None, max_length=ITEM_ID_CHARS)


class Pick(Body):
    """The shopper's final choice: an item id, else the current top result."""

    item_id: str | None = Field(None, max_length=ITEM_ID_CHARS)


class AttributeValue(BaseModel):
    value: str
    predicted: bool = Field(description="true when the catalog has no label and the attribute heads predicted it")


class ItemOut(BaseModel):
    id: str
    title: str
    category: str
    attributes: dict[str, AttributeValue]
    image_url: str | None = Field(description="the catalog image, served by GET /v1/items/{id}/image")


class TurnResult(BaseModel):
    dialog_id: str
    turn: int = Field(description="how many turns the dialog has now")
    items: list[ItemOut]
    understood: dict[str, str] = Field(description="the attribute values asked for so far")
    reference: str | None = Field(description="the item the next turn is about by default (null: the photo)")
    note: str | None = Field(None, description="a note for the shopper, e.g. how their message was read")


class StoredTurnOut(BaseModel):
    turn: int
    kind: str = Field(description="text | item | photo | feedback")
    text: str | None
    reference: str | None
    items: list[ItemOut]
    understood: dict[str, str]


class DialogOut(BaseModel):
    dialog_id: str
    turns: list[StoredTurnOut]
    picked: ItemOut | None


class PickResult(BaseModel):
    dialog_id: str
    picked: ItemOut


class Health(BaseModel):
    status: str
    items: int
    catalog: str
    store: str
    cached_dialogs: int


class Problem(BaseModel):
    detail: str
