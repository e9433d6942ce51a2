"""fashion-assistant: a dialog-based fashion shopping assistant. The public API is `Assistant` and `load_catalog`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from assistant.core.loaders import load_catalog

if TYPE_CHECKING:
    from assistant.api import Assistant

__all__ = ["Assistant", "load_catalog"]


def __getattr__(name: str) -> Any:
    """`assistant.Assistant` on first use, so that importing the base layer (`assistant.core…`) loads no torch."""
    if name == "Assistant":
        from assistant.api import Assistant  # local: the model stack (torch, open_clip, faiss) loads only when used

        return Assistant
    raise AttributeError(f"module 'assistant' has no attribute {name!r}")
