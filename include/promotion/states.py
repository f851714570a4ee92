"""The package's vocabulary: lifecycle statuses, registry stages, aliases, tag keys and audit actions.

One definition each, used by the code, the audit table and the docs. ``StrEnum`` members compare
equal to their string values, so they can be written to MLflow tags and SQL as they are.
"""

from __future__ import annotations

from enum import StrEnum

# the aliases are defined once, in the client (serving processes read them too); re-exported here
from promotion_client.names import CHALLENGER_ALIAS, CHAMPION_ALIAS

__all__ = [
    "CHALLENGER_ALIAS",
    "CHAMPION_ALIAS",
    "CLAIM_REFUSED_TAG",
    "METRIC_TAG_PREFIX",
    "AuditAction",
    "Stage",
    "Status",
    "Tag",
]


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
    # the post-promotion check's outcome, written by the check itself (a task state set by hand writes no row)
    POST_CHECK_PASSED = "post_check_passed"
    POST_CHECK_FAILED = "post_check_failed"
    # production health (model_health): a finding opened on the champion, and the same finding gone
    HEALTH_DEGRADED = "health_degraded"
    HEALTH_RECOVERED = "health_recovered"
    # registry retention (model_registry_retention): a version deleted, or only moved to the Archived stage
    RETENTION_DELETE = "retention_delete"
    RETENTION_ARCHIVE = "retention_archive"
    # a change's registry writes announced before they start (staging, rejection, promotion, rollback): a crash
    # between its writes and its rows is then "in progress" to the watch, not drift, and the task's retry completes it
    INTENT = "intent"
    # on-call accepted a difference the watch cannot repair (an old version deleted out of band)
    DRIFT_ACKNOWLEDGED = "drift_acknowledged"


class Tag(StrEnum):
    """The tags the pipeline writes on a model version (the registry contract, docs/architecture.md). They describe; no
    decision reads them alone (the audit log and the version's own MLflow run are the record)."""

    # lineage, at registration
    MODEL_NAME = "model_name"
    DATA_VERSION = "data_version"
    GIT_COMMIT = "git_commit"
    DAG_ID = "airflow_dag_id"
    RUN_ID = "airflow_run_id"
    CHAMPION_AT_EVALUATION = "champion_at_evaluation"
    # the lifecycle
    STATUS = "promotion_status"
    STAGING_TIMESTAMP = "staging_timestamp"
    APPROVED_BY = "approved_by"
    APPROVAL_REASON = "approval_reason"
    PRODUCTION_APPROVER = "production_approver"
    PRODUCTION_TIMESTAMP = "production_timestamp"
    PROMOTED_OVER = "promoted_over"
    ARCHIVED_TIMESTAMP = "archived_timestamp"
    REJECTION_REASON = "rejection_reason"
    REJECTION_TIMESTAMP = "rejection_timestamp"
    ROLLBACK_CHANGE = "rollback_change"
    ROLLBACK_REASON = "rollback_reason"
    ROLLED_BACK_BY = "rolled_back_by"
    ROLLBACK_TIMESTAMP = "rollback_timestamp"
    # shadow evaluation (display only: the Model promotion page; the record is the version's run and the audit log)
    SHADOW_SOURCE = "shadow_source"
    SHADOW_SUMMARY = "shadow_summary"


# on a registered model or experiment someone else could write: never adopted by the pipeline
CLAIM_REFUSED_TAG = "claim_refused"
METRIC_TAG_PREFIX = "metric_"  # a gate metric on a version: ``metric_<name>``, written at registration
