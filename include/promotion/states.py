"""The package's vocabulary: lifecycle statuses, registry stages, aliases and audit actions.

One definition each, used by the code, the audit table and the docs. ``StrEnum`` members compare
equal to their string values, so they can be written to MLflow tags and SQL as they are.
"""

from __future__ import annotations

from enum import StrEnum

# the aliases are defined once, in the client (serving processes read them too); re-exported here
from promotion_client.names import CHALLENGER_ALIAS, CHAMPION_ALIAS

__all__ = ["CHALLENGER_ALIAS", "CHAMPION_ALIAS", "AuditAction", "Stage", "Status"]


class Status(StrEnum):
    """A version's place in the lifecycle: its ``promotion_status`` tag."""

    REGISTERED = "registered"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


class Stage(StrEnum):
    """MLflow's legacy stages, mirrored for tools that still read them (never read for a decision)."""

    NONE = "None"
    STAGING = "Staging"
    PRODUCTION = "Production"
    ARCHIVED = "Archived"


class AuditAction(StrEnum):
    """What an audit row records. The audit table refuses any other value."""

    REGISTER = "register"
    STAGE = "stage"
    SUPERSEDE = "supersede"
    APPROVE = "approve"
    PROMOTE = "promote"
    ARCHIVE = "archive"
    REJECT = "reject"
    ROLLBACK_RESTORE = "rollback_restore"
    ROLLBACK_DEMOTE = "rollback_demote"
    DRIFT_DETECTED = "drift_detected"
    DRIFT_RESTORE = "drift_restore"
    POST_CHECK_ROLLBACK = "post_check_rollback"
