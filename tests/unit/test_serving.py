"""The serving client as the Airflow side sees it: the names it shares with the configs, and that importing it (with
Airflow installed) never imports Airflow. The cache's own tests are in client/tests/ (run in a venv of their own by
tests/integration/test_client_venv.py); tests/integration/test_serving.py follows a moving alias through outages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import promotion_client
from promotion_client import names

from include.promotion import config, states

ROOT = Path(__file__).resolve().parents[2]


def test_model_names_are_the_ones_the_configs_accept() -> None:
    assert config.MODEL_NAME is names.MODEL_NAME  # one definition
    assert config.parse_model_config is not None and names.MODEL_NAME.fullmatch("fraud-detector")


def test_the_aliases_are_defined_once_in_the_client() -> None:
    assert states.CHAMPION_ALIAS is promotion_client.CHAMPION_ALIAS == "champion"
    assert states.CHALLENGER_ALIAS is promotion_client.CHALLENGER_ALIAS == "challenger"


def test_the_client_imports_without_airflow_mlflow_or_sklearn() -> None:
    """A serving image needs mlflow-skinny, scikit-learn and skops, not Airflow; and importing is cheap."""
    code = (
        "import sys, promotion_client, promotion_client.cache; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'mlflow', 'sklearn', 'pandas', 'skops', "
        "'include'}))"
    )
    path = os.pathsep.join([str(ROOT / "client" / "src"), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT / "client",
        env={**os.environ, "PYTHONPATH": path},
    )
    assert out.stdout.strip() == "[]"


def test_every_public_name_is_exported() -> None:
    assert sorted(promotion_client.__all__) == sorted(set(promotion_client.__all__))
    for name in promotion_client.__all__:
        assert getattr(promotion_client, name) is not None
    assert {"ChampionCache", "ServingError", "CopyRefused", "RegistryUnreachable"} <= set(promotion_client.__all__)
