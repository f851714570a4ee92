"""Every error the client raises on purpose, in one place, rooted in a plain ``Exception``.

Each message says what is wrong and what to do. The Airflow side translates them to Airflow's exceptions at its
task boundary; a serving process or a receiver catches ``ClientError`` (or one of its kinds) directly.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class: a refusal by the client, with a message meant for a human."""


# -- serving
class ServingError(ClientError):
    """Nothing to serve: no champion reachable in MLflow and no valid local copy (the message says what to do)."""


class CopyRefused(ServingError):
    """A local copy or a downloaded artifact that is not loaded (the message says what is wrong with it)."""


class RegistryUnreachable(ServingError):
    """MLflow could not be asked (refused connection, timeout, 5xx, or an error such as a refused login)."""


# -- signing and deploy events
class DeliveryRefused(ClientError):
    """A deploy event a receiver must not act on (``verify_delivery``); ``status_code`` is the HTTP answer.

    401: unsigned, mis-signed, outside the time window or for another target; 409: an event already applied (a
    replay, or the sender's retry of a delivery that got through: the sender counts 409 as delivered); 413: too
    large; 400: not a deploy event.
    """

    def __init__(self, message: str, status_code: int = 401):
        super().__init__(message)
        self.status_code = status_code
