"""Which code wrote an audit row: the package's version and commit, computed once per process.

``PACKAGE_VERSION`` is ``<version from pyproject.toml>+<commit>`` (``settings.git_commit``: ``PROMOTION_GIT_COMMIT``,
else one ``git rev-parse`` the first time it is asked, never per row), or the version alone when no commit is known.
The Airflow DAG version that acted comes from the task's own context (``RunRef.dag_version``).
"""

from __future__ import annotations

import tomllib
from functools import lru_cache

from include.promotion import settings


@lru_cache(maxsize=1)
def package_version() -> str:
    """``0.1.0+3f2a9c1b0d4e``: the package's version and the commit it runs from (``0.1.0`` alone if unknown)."""
    try:
        with (settings.REPO_ROOT / "pyproject.toml").open("rb") as f:
            version = str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        version = "unknown"
    commit = settings.git_commit()
    return version if commit in ("", "unknown") else f"{version}+{commit[:12]}"
