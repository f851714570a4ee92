"""Every error the client raises on purpose, in one place, rooted in a plain ``Exception``.

Each message says what is wrong and what to do. The Airflow side translates them to Airflow's exceptions at its
task boundary; a serving process or a receiver catches ``ClientError`` (or one of its kinds) directly.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class: a refusal by the client, with a message meant for a human."""
