"""promotion_client: the serving side of governed model promotion, installable without Apache Airflow.

- serving: load ``models:/<name>@champion`` through a local cache that follows the alias and keeps serving the
  last good copy while MLflow is unreachable;
- deploy events: the signed events the promotion pipeline sends when production changes, and their receiver side;
- the one HMAC signing scheme both use.
"""

from __future__ import annotations

from promotion_client.errors import ClientError

__all__ = ["ClientError"]
