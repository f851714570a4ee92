"""promotion_client: the serving side of governed model promotion, installable without Apache Airflow.

- serving: load ``models:/<name>@champion`` through a local cache that follows the alias and keeps serving the
  last good copy while MLflow is unreachable;
- deploy events: the signed events the promotion pipeline sends when production changes, and their receiver side;
- the one HMAC signing scheme both use.

Importing the package is cheap: mlflow, scikit-learn and skops are imported when a model is first loaded.
"""

from __future__ import annotations

from promotion_client.cache import ChampionCache
from promotion_client.errors import ClientError, CopyRefused, DeliveryRefused, RegistryUnreachable, ServingError
from promotion_client.events import DeployEvent, EventType
from promotion_client.names import CHALLENGER_ALIAS, CHAMPION_ALIAS
from promotion_client.prediction_log import PredictionLog, RecordRefused
from promotion_client.receiver import RecentDeliveries, Seen, verify_delivery
from promotion_client.scorer import FeaturesRefused, Scorer
from promotion_client.served import Served

__all__ = ["ClientError"]

# -- serving
__all__ += [
    "CHALLENGER_ALIAS",
    "CHAMPION_ALIAS",
    "ChampionCache",
    "CopyRefused",
    "RegistryUnreachable",
    "Served",
    "ServingError",
]

# -- signing and deploy events
__all__ += ["DeliveryRefused", "DeployEvent", "EventType", "RecentDeliveries", "Seen", "verify_delivery"]

# -- prediction log and shadow
__all__ += ["FeaturesRefused", "PredictionLog", "RecordRefused", "Scorer"]
