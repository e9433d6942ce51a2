"""The users registry: `template`, `module:function` users, and clear errors for bad specs."""

from __future__ import annotations

import textwrap
import uuid

import pytest

from assistant.core.catalog import Item
from assistant.model_dir import UsersConfig
from assistant.users import FunctionUser, User, resolve_user, template_user
from simulator.template_user import TemplateUser

SHOWN = Item("1", None, "Acme Women Red Kurta", "Kurtas", {"gender": "Women", "articleType": "Kurtas",
                                                           "baseColour": "Red"})
TARGET = Item("2", None, "Acme Women Green Kurta", "Kurtas", {"gender": "Women", "articleType": "Kurtas",
                                                              "baseColour": "Green"})


@pytest.fixture
def helper_module(tmp_path, monkeypatch) -> str:
    """A real module file on sys.path with a good user function and two bad ones."""
    name = f"tests_helper_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        def fn(shown, target, turn):
            return f"turn {turn}: {target['attributes']['baseColour'].lower()} not {shown['title']}"

        def returns_number(shown, target, turn):
            return 42

        NOT_CALLABLE = "just a string"
    """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_template_resolves_to_the_template_shopper(real_catalog) -> None:
    user = resolve_user("template", real_catalog, seed=4)
    assert isinstance(user, TemplateUser) and isinstance(user, User)
    assert user.seed == 4
    shown, target = real_catalog.items[0], real_catalog.items[1]
    assert user.respond(shown, target, 0) == TemplateUser(real_catalog, seed=4).respond(shown, target, 0)
    assert "green" in resolve_user(" template ").respond(SHOWN, TARGET, 0)


def test_the_users_section_sets_up_the_template_shopper(real_catalog) -> None:
    settings = UsersConfig(max_facets=1, title_words=0, seed=9)
    resolved = resolve_user("template", real_catalog, seed=3, settings=settings)
    assert (resolved.seed, resolved.max_facets, resolved.title_words) == (3, 1, 0)
    from_section = template_user(real_catalog, settings)
    assert (from_section.seed, from_section.max_facets, from_section.title_words) == (9, 1, 0)
    pairs = list(zip(real_catalog.items[:200], real_catalog.items[200:400], strict=True))
    one_facet = [resolved.respond(shown, target, 0) for shown, target in pairs]
    default, twin = resolve_user("template", real_catalog, seed=3), TemplateUser(real_catalog, 3, 1, 0)
    assert one_facet == [twin.respond(shown, target, 0) for shown, target in pairs]
    assert sum(reply != default.respond(shown, target, 0) for reply, (shown, target) in zip(one_facet, pairs,
                                                                                           strict=True)) > 50


def test_module_function_user_gets_plain_dicts(helper_module) -> None:
    user = resolve_user(f"{helper_module}:fn")
    assert isinstance(user, FunctionUser) and isinstance(user, User)
    assert user.respond(SHOWN, TARGET, 3) == "turn 3: green not Acme Women Red Kurta"


def test_a_function_that_returns_no_text_is_reported(helper_module) -> None:
    user = resolve_user(f"{helper_module}:returns_number")
    with pytest.raises(TypeError, match="returned int, not str"):
        user.respond(SHOWN, TARGET, 0)


@pytest.mark.parametrize(("spec", "message"), [
    ("", "unknown user ''"),
    ("nonsense", "unknown user 'nonsense': expected one of template, simulator"),
    ("simulator", "the simulator user needs a model dir"),
    (":fn", "expected 'module:function'"),
    ("module_only:", "expected 'module:function'"),
    ("no_such_module_for_users_test:fn", "cannot import it"),
])
def test_bad_specs_get_clear_errors(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_user(spec)


def test_missing_or_uncallable_functions_get_clear_errors(helper_module) -> None:
    with pytest.raises(ValueError, match="cannot import it"):
        resolve_user(f"{helper_module}:no_such_function")
    with pytest.raises(ValueError, match="NOT_CALLABLE is not callable"):
        resolve_user(f"{helper_module}:NOT_CALLABLE")
