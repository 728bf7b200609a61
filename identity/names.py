"""What a person's names may be, and how a reference to a person is read.

One rule, read the same by the CLI, the API and the Python API (all three reach the store
through `identity.store.persons.resolve_person`, which calls `person_ref`):

* a reference made only of the ASCII digits 0-9 is a person **id**, and nothing else;
* any other reference is an **external id** (or an alias: a retired external id).

So an external id may never be made only of digits: were "2" allowed, it would shadow
person id 2 for anyone who resolved external ids first (or be unreachable, if ids come
first). Both namespaces stay separate without a prefix or a second route.

Names are compared as Unicode NFC (a name typed on macOS, decomposed, is the same name);
control and format characters (NUL, zero-width spaces and joiners, bidi overrides) are
refused because two names that look alike must not be different persons, and PostgreSQL
cannot store NUL at all.
"""

from __future__ import annotations

import unicodedata

from identity.errors import InputError

MAX_NAME_LENGTH = 256
# bigint: the persons table's id column.
MAX_PERSON_ID = 2**63 - 1

# Cc: control (NUL, tabs, newlines), Cf: format (zero-width space/joiners, BOM, bidi
# overrides), Cs: lone surrogates, Co: private use, Cn: unassigned, Zl/Zp: line and
# paragraph separators. A person's name needs none of them.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _refused(text: str) -> str | None:
    """The first character a name may not contain, described; None when all are fine."""
    for char in text:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            name = unicodedata.name(char, "")
            return f"U+{ord(char):04X}" + (f" {name}" if name else "")
    return None


def _clean(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"the {what} must be text")
    text = unicodedata.normalize("NFC", value)
    bad = _refused(text)
    if bad is not None:
        raise InputError(f"the {what} contains a control or invisible character ({bad})")
    if not text.strip():
        raise InputError(f"the {what} is empty or only whitespace")
    if len(text) > MAX_NAME_LENGTH:
        raise InputError(f"the {what} is longer than {MAX_NAME_LENGTH} characters")
    return text


def is_person_id(text: str) -> bool:
    """Made only of ASCII digits (str.isdigit() also accepts '²' and '٢', which int() may refuse)."""
    return bool(text) and text.isascii() and text.isdigit()


def external_id(value: object) -> str:
    """A valid external id, NFC-normalised; InputError (422) saying what is wrong."""
    text = _clean(value, "external id")
    if text != text.strip():
        raise InputError("the external id begins or ends with whitespace")
    if all(c.isdigit() for c in text):
        raise InputError(
            f"the external id {text!r} is only digits: a reference made of digits is a person id, "
            "so an external id needs at least one other character (e.g. 'emp-" + text + "')")
    return text


def display_name(value: object) -> str | None:
    """A display name NFC-normalised and stripped; None stays None (no name)."""
    if value is None:
        return None
    return _clean(value, "display name").strip()


def person_ref(ref: int | str) -> int | str:
    """A reference read by the one rule: an int id, or the (NFC) external id to look up.
    A reference no person can have is an InputError (422), never a database error."""
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        raise InputError("a person reference is an id or an external id")
    if isinstance(ref, int):
        person_id = ref
    elif is_person_id(ref):
        person_id = int(ref)
    else:
        text = unicodedata.normalize("NFC", ref)
        if not text or _refused(text) is not None:
            raise InputError(f"{ref!r} is not a person id or a valid external id")
        if all(c.isdigit() for c in text):  # '²', '٢': digits, but not an id
            raise InputError(f"{ref!r} is not a person id: ids are written with the digits 0-9")
        return text
    if not 1 <= person_id <= MAX_PERSON_ID:
        raise InputError(f"person ids run from 1 to {MAX_PERSON_ID}")
    return person_id


def search_text(value: str) -> str:
    """A substring to search persons by, NFC-normalised (no control characters: PostgreSQL
    cannot take NUL)."""
    text = unicodedata.normalize("NFC", value)
    bad = _refused(text)
    if bad is not None:
        raise InputError(f"the search text contains a control or invisible character ({bad})")
    return text
