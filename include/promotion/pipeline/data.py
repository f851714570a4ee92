"""Fetch, check and fingerprint a model's training data.

Every check runs before anything reaches MLflow, so bad data fails the run with a message and
leaves the registry and the audit log untouched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from include.promotion.config import BuiltinSource, ModelConfig, PostgresSource
from include.promotion.errors import DataValidationError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

HASH_BUCKETS = 10_000


@dataclass(frozen=True)
class DataSummary:
    """What ``load_data`` hands to the next task: small, JSON-friendly, no data."""

    data_version: str
    rows: int
    positives: int

    def as_dict(self) -> dict[str, object]:
        return {"data_version": self.data_version, "rows": self.rows, "positives": self.positives}


def fetch(cfg: ModelConfig) -> pd.DataFrame:
    """The raw table from the configured source (PostgreSQL through its Airflow connection, or built-in)."""
    source = cfg.data
    if isinstance(source, PostgresSource):
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return PostgresHook(postgres_conn_id=source.conn_id).get_df(source.query)
    if isinstance(source, BuiltinSource):
        from include.promotion.pipeline import demo_data

        return demo_data.builtin_frame(source.dataset, rows=source.rows, seed=source.seed)
    raise DataValidationError(f"{cfg.name}: unsupported data source {source!r}")


def validate(cfg: ModelConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """Return the feature and target columns, or raise ``DataValidationError`` saying what to fix."""
    import pandas as pd

    where = f"training data of '{cfg.name}'"
    if frame is None or len(frame) == 0:
        raise DataValidationError(f"{where} is empty: the source returned no rows. Check the query or seed the table.")
    key = cfg.holdout.key
    columns = [*cfg.features, cfg.target, *([key] if key else [])]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{where} lacks column(s) {missing}; the source returned {list(frame.columns)}. "
            "Fix the query or the 'features'/'target'/'holdout.key' fields of the model config."
        )
    frame = frame[columns]
    if len(frame) < cfg.min_rows:
        raise DataValidationError(
            f"{where} has {len(frame)} rows, fewer than min_rows={cfg.min_rows}. Load more data or lower min_rows."
        )
    nan_target = int(frame[cfg.target].isna().sum())
    if nan_target:
        raise DataValidationError(
            f"{where} has {nan_target} row(s) with no value in target column '{cfg.target}'. "
            "Label or drop them at the source."
        )
    classes = sorted(frame[cfg.target].unique().tolist())
    if len(classes) != 2:
        raise DataValidationError(
            f"{where} must hold exactly two classes in '{cfg.target}' for a binary classifier, found {classes}."
        )
    non_numeric = [c for c in cfg.features if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise DataValidationError(f"{where} has non-numeric feature column(s) {non_numeric}; cast or encode them.")
    nan_features = {c: int(n) for c, n in frame[cfg.features].isna().sum().items() if n}
    if nan_features:
        raise DataValidationError(
            f"{where} has missing values in feature column(s) {nan_features} (column: count). "
            "Fill or drop them at the source."
        )
    minority = int(frame[cfg.target].value_counts().min())
    if minority < 10:
        raise DataValidationError(
            f"{where} has only {minority} example(s) of its rarer class; at least 10 are needed to hold some out."
        )
    if key:
        _check_key(cfg, frame, where)
    # One canonical row order, so the fingerprint and the holdout split do not depend on how the source
    # happened to return the rows.
    return frame.sort_values(by=list(frame.columns), kind="mergesort").reset_index(drop=True)


def holdout_mask(cfg: ModelConfig, frame: pd.DataFrame) -> np.ndarray:
    """With ``holdout.key``: True for the held-out rows. A row's side depends on its key alone (and
    ``random_state``), never on the other rows, so it keeps its side as the table grows."""
    import pandas as pd

    salted = str(cfg.holdout.random_state) + ":" + frame[cfg.holdout.key].astype(str)
    buckets = pd.util.hash_pandas_object(salted, index=False).to_numpy() % HASH_BUCKETS
    return buckets < round(cfg.holdout.test_size * HASH_BUCKETS)


def _check_key(cfg: ModelConfig, frame: pd.DataFrame, where: str) -> None:
    key = cfg.holdout.key
    if nulls := int(frame[key].isna().sum()):
        raise DataValidationError(f"{where} has {nulls} row(s) with no value in holdout.key column '{key}'.")
    if duplicated := int(frame[key].duplicated().sum()):
        raise DataValidationError(
            f"{where} has {duplicated} duplicated value(s) in holdout.key column '{key}'; the key must identify "
            "each row (use the table's primary key)."
        )
    held_out = holdout_mask(cfg, frame)
    for part, rows in (("holdout", frame[cfg.target][held_out]), ("training part", frame[cfg.target][~held_out])):
        if rows.nunique() < 2:
            raise DataValidationError(
                f"{where}: the {part} of the split on holdout.key '{key}' holds only one class; load more rows "
                "or change holdout.test_size."
            )


def fingerprint(frame: pd.DataFrame) -> str:
    """A stable content hash of the training table (column names, dtypes and values, in order)."""
    import pandas as pd

    digest = hashlib.sha256()
    digest.update("|".join(f"{c}:{t}" for c, t in frame.dtypes.astype(str).items()).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def load(cfg: ModelConfig) -> tuple[pd.DataFrame, DataSummary]:
    """Fetch, check and fingerprint the data of one model."""
    frame = validate(cfg, fetch(cfg))
    positives = int((frame[cfg.target] == sorted(frame[cfg.target].unique())[-1]).sum())
    return frame, DataSummary(data_version=fingerprint(frame), rows=len(frame), positives=positives)


def load_expected(cfg: ModelConfig, data_version: str) -> pd.DataFrame:
    """Reload the data a previous task validated, refusing it if it changed since."""
    frame, summary = load(cfg)
    if summary.data_version != data_version:
        raise DataValidationError(
            f"training data of '{cfg.name}' changed since load_data ({data_version} -> {summary.data_version}); "
            "trigger a new run so that training and evaluation see one consistent snapshot."
        )
    return frame
