"""Surfaces malformed model configs as a DAG import error, where operators look for them.

``model_promotion.py`` skips a broken ``include/models/*.yaml`` so the other models keep their DAGs;
this file fails to import with every broken file's name, field and fix, so the problem shows under
*DAG Import Errors* in the Airflow UI. It defines no dag when every config is valid.
"""

from __future__ import annotations

from include.promotion.config import load_model_configs
from include.promotion.errors import ModelConfigError

_errors = load_model_configs().errors
if _errors:
    raise ModelConfigError("\n".join(_errors.values()))
