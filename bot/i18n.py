"""Answers in the user's Telegram language: gettext catalogs in
bot/locales/<language>/LC_MESSAGES/digitbot.po, English (the source strings) for everyone else.

The .po files are compiled in memory by Babel the first time a language is used (a few milliseconds): no
compiled .mo files in git that could drift from their sources, and nothing to run when installing.

Each update is handled in its own asyncio task; `use_language` (a handler that runs first) sets the language
in a ContextVar that is local to that task, so `_()` anywhere in the handlers answers in the right language.
To update the catalogs after changing strings:
    pybabel extract --no-location -o bot/locales/digitbot.pot bot
    pybabel update -i bot/locales/digitbot.pot -d bot/locales -D digitbot --no-fuzzy-matching
"""

from __future__ import annotations

import functools
import gettext
import io
from contextvars import ContextVar
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from telegram import Update
from telegram.ext import ContextTypes

DOMAIN = "digitbot"
LOCALES = Path(__file__).resolve().parent / "locales"
LANGUAGES = ("en", "ru", "es")  # en is the source language: it needs no catalog

_language: ContextVar[str] = ContextVar("language", default="en")


def N_(message: str) -> str:
    """Marks a string for extraction where it is defined (module constants); `_()` translates it at use."""
    return message


@functools.cache
def translations(language: str) -> gettext.NullTranslations:
    path = LOCALES / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not path.is_file():
        return gettext.NullTranslations()
    with path.open("rb") as po:
        catalog = read_po(po, locale=language, domain=DOMAIN)
    mo = io.BytesIO()
    write_mo(mo, catalog)  # fuzzy (unreviewed) entries are left out: English rather than a wrong guess
    mo.seek(0)
    return gettext.GNUTranslations(mo)


def language_for(language_code: str | None) -> str:
    """Telegram's language_code ("ru", "es-419", "pt-br") -> one of LANGUAGES; English by default."""
    language = (language_code or "").split("-")[0].lower()
    return language if language in LANGUAGES else "en"


def _(message: str) -> str:
    """`message` in the language of the update being handled."""
    return translations(_language.get()).gettext(message)


async def use_language(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The first handler of every update: the language of the user it comes from."""
    user = update.effective_user if isinstance(update, Update) else None
    _language.set(language_for(user.language_code if user else None))
