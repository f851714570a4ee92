"""What a ``ChampionCache`` serves: one version and its loaded model, swapped as one immutable pair."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import pandas as pd


@dataclass(frozen=True)
class Served:
    """What predictions use, swapped as one reference: never a version with another version's model."""

    version: str
    model: Any
    path: Path
    run_id: str | None
    signature: Any
    # what MLflow said the version is when it was downloaded (run_id, source, model_id, tracking server): a version
    # number alone names another model after the registered model is deleted and re-created
    identity: tuple[Any, ...] = ()

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities: exactly ``pipeline.predict_proba(frame)[:, 1]`` of this version."""
        return self.model.predict_proba(frame)[:, 1]
