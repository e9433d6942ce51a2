"""Users as a protocol: anything with `respond(shown, target, turn) -> str`, from a name or `module:function`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from assistant.core.catalog import Catalog, Item
from assistant.model_dir import UsersConfig
from simulator.paraphrase_user import ParaphraseUser
from simulator.template_user import TemplateUser


@runtime_checkable
class User(Protocol):
    """Says, in words, how the target differs from the item it was shown."""

    def respond(self, shown: Item, target: Item, turn: int) -> str: ...


class FunctionUser:
    """Wraps a plain function `f(shown: dict, target: dict, turn: int) -> str` as a User."""

    def __init__(self, function: Callable[[dict, dict, int], str], name: str) -> None:
        self.function = function
        self.name = name

    def respond(self, shown: Item, target: Item, turn: int) -> str:
        reply = self.function(shown.as_dict(), target.as_dict(), turn)
        if not isinstance(reply, str):
            raise TypeError(f"user function {self.name} returned {type(reply).__name__}, not str")
        return reply


def load_function_user(spec: str) -> FunctionUser:
    """`package.module:function` -> a User calling that function."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"user {spec!r}: expected 'module:function'")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"user {spec!r}: cannot import it ({error})") from error
    if not callable(function):
        raise ValueError(f"user {spec!r}: {attribute} is not callable")
    return FunctionUser(function, spec)


USER_NAMES = ("template", "simulator", "paraphrase", "paraphrase-heldout")
PARAPHRASE_BANKS = {"paraphrase": "train", "paraphrase-heldout": "heldout"}


def template_user(catalog: Catalog | None, settings: UsersConfig | None = None,
                  seed: int | None = None) -> TemplateUser:
    """The template shopper as a `users:` config section sets it up (the section's seed unless `seed` is given)."""
    settings = settings or UsersConfig()
    return TemplateUser(catalog, seed=settings.seed if seed is None else seed, max_facets=settings.max_facets,
                        title_words=settings.title_words)


def paraphrase_user(catalog: Catalog | None, settings: UsersConfig | None = None, seed: int | None = None,
                    bank: str = "train") -> ParaphraseUser:
    """The paraphrase shopper (the template shopper's facets in the phrase bank's words) with the `users:` section's
    settings; `bank` is "train" (the part training uses) or "heldout" (the held-aside part, for evaluation)."""
    settings = settings or UsersConfig()
    return ParaphraseUser(catalog, seed=settings.seed if seed is None else seed, max_facets=settings.max_facets,
                          title_words=settings.title_words, bank=bank)


def resolve_user(spec: str, catalog: Catalog | None = None, seed: int = 0, settings: UsersConfig | None = None) -> User:
    """A User from its spec: `template` (the template shopper, set up by `settings`, a `users:` section),
    `paraphrase` / `paraphrase-heldout` (the paraphrase shopper with the phrase bank's train / held-aside part),
    `simulator` (the trained captioner, loaded from a model dir), or `package.module:function`."""
    spec = spec.strip()
    if spec == "template":
        return template_user(catalog, settings, seed)
    if spec in PARAPHRASE_BANKS:
        return paraphrase_user(catalog, settings, seed, PARAPHRASE_BANKS[spec])
    if spec == "simulator":
        # Resolved with a model dir by the simulator's loader (simulator/user.py: load_simulator_user).
        raise ValueError("the simulator user needs a model dir")
    if ":" in spec:
        return load_function_user(spec)
    raise ValueError(f"unknown user {spec!r}: expected one of {', '.join(USER_NAMES)} or 'package.module:function'")
