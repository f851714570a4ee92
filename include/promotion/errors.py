"""Every error the package raises on purpose, in one place.

Each message says what is wrong and what to do about it. All of them derive from ``PromotionError``
so a caller can catch the package's refusals without catching programming errors.
"""

from __future__ import annotations


class PromotionError(Exception):
    """Base class: a refusal by the package, with a message meant for a human.

    A plain ``Exception``: the library knows nothing of Airflow. At the task boundary (``tasks.boundary``) it
    becomes an ``AirflowFailException``, so a task that refuses fails at once instead of being retried:
    retrying bad data, a bad config or a refused approval cannot succeed.
    """


class ModelConfigError(PromotionError):
    """A file in the models folder is malformed (the message names the file and the field)."""


class UnknownModel(PromotionError):
    """A model name that no config in the models folder declares."""


class DataValidationError(PromotionError):
    """The training data cannot be used (empty, too small, NaN targets, one class, missing columns)."""


class EstimatorError(PromotionError):
    """The configured estimator cannot be imported or built."""


class InputRejected(PromotionError):
    """A value from a person (a reason, a version number) is outside its limits; nothing was changed."""


class UntrustedValue(PromotionError):
    """A value handed between tasks does not carry the workers' signature: someone else wrote it."""


class AuditLogError(PromotionError):
    """The audit log is missing, behind its schema, or its hash chain is broken."""


class RegistryStateError(PromotionError):
    """The registry is not in the state this step expects (e.g. the version moved while waiting)."""


class ApprovalRefused(PromotionError):
    """The approval cannot be given or was not valid (self-approval, no eligible reviewer, not a reviewer)."""


class NotAuthorized(PromotionError):
    """The user who asked is not allowed this action for this model (e.g. a rollback by someone not on call)."""


class RollbackTargetInvalid(PromotionError):
    """The requested rollback cannot be done; the message says what to pass instead."""


class InvariantViolation(PromotionError):
    """The registry does not hold exactly one Production version holding the ``champion`` alias."""


class RegistryDrift(PromotionError):
    """The registry differs from what the audit log records (found by the registry watch)."""


class PostPromotionCheckFailed(PromotionError):
    """The champion did not pass the post-promotion check (the message says what failed and what was restored)."""


class ShadowEvidenceError(PromotionError):
    """Shadow evidence could not be gathered as configured (e.g. a ``shadow.replay_query`` that fails or lacks a
    feature column); the message names the key to fix."""


class HealthCheckError(PromotionError):
    """A model's production health could not be checked as configured (e.g. a ``health.labels_query`` that fails or
    returns the wrong columns); the message names the model and the key to fix."""


class HealthDegraded(PromotionError):
    """A champion's production health check found a breach (the message says what, and what was done)."""


class WebhookRefused(PromotionError):
    """A delivery to the MLflow webhook receiver that is not acted on; ``status_code`` is the HTTP answer.

    401: not signed by MLflow with the shared secret, outside the time window, or a replay; 413: too large;
    400: signed but not a registry event, or a body cut short; 408: a body that did not arrive in time; 503: nothing
    can act on it now (MLflow retries).
    """

    def __init__(self, message: str, status_code: int = 401):
        super().__init__(message)
        self.status_code = status_code


class DeployNotificationFailed(PromotionError):
    """A deploy target did not take a production-change event after retries; the change itself stands."""
