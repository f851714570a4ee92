from __future__ import annotations

import numpy as np
import pytest

from include.promotion import data, demo_data
from include.promotion.config import parse_model_config
from include.promotion.errors import DataValidationError
from tests.unit.test_config import DEMO

CFG = parse_model_config(DEMO)


@pytest.fixture
def frame():
    return demo_data.synthetic_transactions(rows=1000, seed=3)


def test_good_data_passes_and_is_fingerprinted(frame) -> None:
    checked = data.validate(CFG, frame)
    assert list(checked.columns) == [*CFG.features, CFG.target]
    assert data.fingerprint(checked) == data.fingerprint(data.validate(CFG, frame.copy()))
    changed = checked.copy()
    changed.loc[0, "amount"] += 1
    assert data.fingerprint(changed) != data.fingerprint(checked)


def test_the_fingerprint_does_not_depend_on_row_order(frame) -> None:
    shuffled = frame.sample(frac=1.0, random_state=1)
    assert data.fingerprint(data.validate(CFG, shuffled)) == data.fingerprint(data.validate(CFG, frame))


def test_the_demo_data_is_imbalanced_but_learnable(frame) -> None:
    rate = frame["is_fraud"].mean()
    assert 0.03 < rate < 0.15


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda f: f.iloc[0:0], "is empty"),
        (lambda f: f.head(100), "fewer than min_rows"),
        (lambda f: f.drop(columns=["merchant_risk"]), "lacks column(s) ['merchant_risk']"),
        (
            lambda f: f.assign(is_fraud=np.where(np.arange(len(f)) % 7 == 0, np.nan, f["is_fraud"])),
            "no value in target",
        ),
        (lambda f: f.assign(is_fraud=0), "exactly two classes"),
        (lambda f: f.assign(amount=np.where(np.arange(len(f)) % 5 == 0, np.nan, f["amount"])), "'amount': 200"),
        (lambda f: f.assign(hour="noon"), "non-numeric"),
    ],
)
def test_bad_data_is_refused_with_what_to_fix(frame, spoil, message: str) -> None:
    with pytest.raises(DataValidationError) as err:
        data.validate(CFG, spoil(frame))
    assert message in str(err.value)
    assert "fraud-detector" in str(err.value)
