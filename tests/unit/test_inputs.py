from __future__ import annotations

import pytest

from include.promotion.errors import InputRejected
from include.promotion.inputs import MAX_REASON_CHARS, MAX_VERSION, clean_reason, clean_version


def test_a_reason_is_stripped_and_kept() -> None:
    assert clean_reason("  recall dropped  ") == "recall dropped"
    assert clean_reason("x" * MAX_REASON_CHARS) == "x" * MAX_REASON_CHARS
    assert clean_reason(None, required=False) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "is required"),
        ("   ", "is required"),
        ("x" * (MAX_REASON_CHARS + 1), "2001 characters long"),
        ("x" * 1_000_000, "1000000 characters long"),
        ("ok\x00", "NUL character"),
        (42, "must be text"),
    ],
)
def test_bad_reasons_are_refused(value, message: str) -> None:
    with pytest.raises(InputRejected, match=message):
        clean_reason(value)


def test_version_numbers_within_limits() -> None:
    assert clean_version(None) is None and clean_version("") is None
    assert clean_version(3) == "3" and clean_version(" 07 ") == "7" and clean_version(MAX_VERSION) == str(MAX_VERSION)


@pytest.mark.parametrize("value", [0, -1, MAX_VERSION + 1, 10**30, 2**63, "two", "1.5", "1\x00", True, 1.0])
def test_version_numbers_outside_limits_are_refused(value) -> None:
    with pytest.raises(InputRejected, match="version number"):
        clean_version(value)
