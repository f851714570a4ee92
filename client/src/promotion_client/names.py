"""The registry names the package and its clients share: one definition each (the Airflow side imports them).

``champion`` is the production version, ``challenger`` the version awaiting approval. A registered model's name is
what ``include/models/*.yaml`` accepts; an alias is what MLflow accepts.
"""

from __future__ import annotations

import re

CHAMPION_ALIAS = "champion"  # the production version
CHALLENGER_ALIAS = "challenger"  # the version awaiting approval

# The registered-model names the package's configs accept (include/promotion/config.py uses this one), used with
# fullmatch: "$" alone accepts a final "\n".
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
