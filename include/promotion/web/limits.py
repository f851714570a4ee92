"""Limits on what people send the "Model promotion" pages: page numbers, the version cursor, a data version.

Each is checked before anything is read, and refused with a message saying what to send (``InputRejected``; the
routes answer 400 with it).
"""

from __future__ import annotations

import re
from typing import Any

from include.promotion.errors import InputRejected
from include.promotion.inputs import clean_version

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_PAGE = 100_000  # 200 x 100,000 rows: far beyond any model's history; keeps OFFSET bounded
MAX_DATA_VERSION_CHARS = 200
# data versions are fingerprints like ``sha256:...``; anything else is refused before it reaches a filter
_DATA_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._+/=-]*")


def clean_page(page: Any, per_page: Any) -> tuple[int, int]:
    """(page, per_page) from query parameters: page 1..MAX_PAGE, per_page 1..MAX_PAGE_SIZE; refused otherwise."""
    values = []
    for what, value, default, top in (
        ("page", page, 1, MAX_PAGE),
        ("per_page", per_page, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
    ):
        if value is None or value == "":
            values.append(default)
            continue
        text = str(value).strip()
        if not text.isdigit() or len(text) > 6 or not 1 <= int(text) <= top:
            raise InputRejected(f"{what} must be a whole number between 1 and {top}.")
        values.append(int(text))
    return values[0], values[1]


def clean_before(value: Any) -> int | None:
    """The version cursor of a report page: a version number, or None for the newest versions."""
    version = clean_version(value, "before")
    return int(version) if version is not None else None


def clean_data_version(value: Any) -> str:
    """A data version to look up: a fingerprint of at most MAX_DATA_VERSION_CHARS characters."""
    text = str(value or "").strip()
    if not text:
        raise InputRejected("data_version is required, e.g. the data_version tag of a model version.")
    if len(text) > MAX_DATA_VERSION_CHARS or not _DATA_VERSION.fullmatch(text):
        raise InputRejected(
            f"data_version must be at most {MAX_DATA_VERSION_CHARS} letters, digits and ':._+/=-' "
            "(a fingerprint like sha256:...)."
        )
    return text
