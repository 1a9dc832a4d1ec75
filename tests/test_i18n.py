"""The translation catalogs are complete: every string the bot can say is translated in every language."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po

from bot.i18n import DOMAIN, LANGUAGES, LOCALES, _, language_for, translations

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def source_messages() -> set[str]:
    """Every string marked with _() or N_() in the bot's code, as `pybabel extract` finds them."""
    found = extract_from_dir(ROOT / "bot", [("**.py", "python")], keywords=DEFAULT_KEYWORDS)
    return {message for _file, _line, message, _comments, _context in found if isinstance(message, str)}


def problems(catalog: Catalog, messages: set[str]) -> list[str]:
    """Why the catalog cannot answer every message: missing, untranslated, unreviewed (fuzzy), or with
    other {placeholders} than the English string (a KeyError at run time)."""
    found = []
    for message in sorted(messages):
        entry = catalog.get(message)
        if entry is None or not entry.string:
            found.append(f"missing: {message!r}")
        elif entry.fuzzy:
            found.append(f"fuzzy: {message!r}")
        elif sorted(PLACEHOLDER.findall(message)) != sorted(PLACEHOLDER.findall(entry.string)):
            found.append(f"placeholders differ: {message!r} -> {entry.string!r}")
    return found


def test_the_bot_marks_its_strings_for_translation():
    messages = source_messages()
    assert len(messages) > 50
    assert "Sorry, that command is for admins only." in messages


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang != "en"])
def test_every_string_is_translated(language):
    with (LOCALES / language / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as po:
        catalog = read_po(po, locale=language)
    assert problems(catalog, source_messages()) == []


def test_a_catalog_that_misses_a_string_fails_the_check():
    catalog = Catalog(locale="ru")
    catalog.add("Thanks!", "Спасибо!")
    catalog.add("Usage: /ban <user id>", "Использование: /ban <id>", flags=["fuzzy"])
    catalog.add("User {user} is no longer banned.", "Пользователь разбанен.")
    messages = {"Thanks!", "Usage: /ban <user id>", "User {user} is no longer banned.", "Model versions:"}
    assert problems(catalog, messages) == [
        "missing: 'Model versions:'",
        "fuzzy: 'Usage: /ban <user id>'",
        "placeholders differ: 'User {user} is no longer banned.' -> 'Пользователь разбанен.'",
    ]


def test_language_codes_fall_back_to_english():
    assert [language_for(code) for code in ("ru", "es-419", "ES", "de", "", None)] == [
        "ru",
        "es",
        "es",
        "en",
        "en",
        "en",
    ]
    assert translations("ru").gettext("Thanks!") == "Спасибо!"
    assert translations("de").gettext("Thanks!") == "Thanks!"
    assert _("Thanks!") == "Thanks!"  # no update being handled: English
