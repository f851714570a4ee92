"""The FAB auth manager as this package needs it: people are their user names, under every auth manager.

Model configs name reviewers and on-call by Airflow user name, and the approval gate assigns its question to those
names (``HITLUser(id=name)``). Airflow asks the auth manager ``is_authorized_hitl_task(assigned_users, user)``, whose
default compares ``user.get_id()``: the user name under the simple auth manager, but FAB's numeric row id. This
subclass compares the user name instead; nothing else changes. Its class name keeps ``FabAuthManager`` in it: the
dag-processor syncs ``access_control`` only for an auth manager so named (``dag_processing/collection.py``).

Set ``AIRFLOW__CORE__AUTH_MANAGER=include.promotion.auth_manager.PromotionFabAuthManager``.
"""

from __future__ import annotations

from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager
from airflow.providers.fab.auth_manager.models import User


class PromotionFabAuthManager(FabAuthManager):
    def is_authorized_hitl_task(self, *, assigned_users: set[str], user: User) -> bool:
        """Only the users the gate named (by user name, as the model's config does) may answer it."""
        return user.get_name() in assigned_users
