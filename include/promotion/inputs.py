"""Limits on what people type (reasons, version numbers), checked before the first write.

A value outside its limits is refused with ``InputRejected`` and changes nothing. The limits keep
every value within what MLflow tags, PostgreSQL and the task supervisor accept.
"""

from __future__ import annotations

from typing import Any

from include.promotion.errors import InputRejected

MAX_REASON_CHARS = 2000
MAX_VERSION = 2**31 - 1  # MLflow stores version numbers as 32-bit integers
MAX_MODEL_NAME_PARAM_CHARS = 100


def optional_model_param(description: str) -> Any:
    """The trigger form's optional ``model_name`` of the DAGs that sweep every governed model (watch, health,
    retention): empty means every model; ``description`` says what the DAG does with one."""
    from airflow.sdk import Param

    return Param(
        "", type="string", maxLength=MAX_MODEL_NAME_PARAM_CHARS, title="Model (optional)", description=description
    )


def clean_reason(value: Any, what: str = "reason", required: bool = True) -> str | None:
    """The reason, stripped; refused when empty (if required), too long, or holding a NUL character."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InputRejected(f"{what} is required: say why, in at most {MAX_REASON_CHARS} characters.")
        return None
    if not isinstance(value, str):
        raise InputRejected(f"{what} must be text, got {type(value).__name__}.")
    text = value.strip()
    if "\x00" in text:
        raise InputRejected(f"{what} holds a NUL character; remove it and try again. Nothing was changed.")
    if len(text) > MAX_REASON_CHARS:
        raise InputRejected(
            f"{what} is {len(text)} characters long; at most {MAX_REASON_CHARS} are kept in the audit log. "
            "Shorten it (link to a ticket for the details). Nothing was changed."
        )
    return text


def clean_version(value: Any, what: str = "target_version") -> str | None:
    """A model version number as a string (None when empty); refused outside 1..2**31-1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InputRejected(f"{what} must be a version number, got {value!r}.")
    text = str(value).strip()
    if not text.isdigit() or len(text) > 10 or not 1 <= int(text) <= MAX_VERSION:
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise InputRejected(f"{what} must be a version number between 1 and {MAX_VERSION}, got {shown!r}.")
    return str(int(text))
