from __future__ import annotations

import numpy as np
import pytest

from include.promotion.config import parse_model_config
from include.promotion.errors import DataValidationError
from include.promotion.pipeline import data, demo_data
from tests.support import DEMO

CFG = parse_model_config(DEMO)


@pytest.fixture
def frame():
    return demo_data.synthetic_transactions(rows=1000, seed=3)


def test_good_data_passes_and_is_fingerprinted(frame) -> None:
    checked = data.validate(CFG, frame)
    assert list(checked.columns) == [*CFG.features, CFG.target, "id"]
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
        (lambda f: f.drop(columns=["id"]), "lacks column(s) ['id']"),
        (lambda f: f.assign(id=np.where(np.arange(len(f)) % 9 == 0, np.nan, f["id"])), "no value in holdout.key"),
        (lambda f: f.assign(id=f["id"] // 2), "duplicated value(s) in holdout.key column 'id'"),
    ],
)
def test_bad_data_is_refused_with_what_to_fix(frame, spoil, message: str) -> None:
    with pytest.raises(DataValidationError) as err:
        data.validate(CFG, spoil(frame))
    assert message in str(err.value)
    assert "fraud-detector" in str(err.value)


def test_a_row_keeps_its_side_of_the_holdout_as_the_table_grows() -> None:
    """The champion was trained on last week's rows: none of them may land in this week's holdout."""
    from include.promotion.pipeline.training import holdout_split

    last_week = data.validate(CFG, demo_data.synthetic_transactions(rows=1000, seed=3))
    this_week = data.validate(CFG, demo_data.synthetic_transactions(rows=3000, seed=3))  # the same 1000 rows + 2000
    before, after = holdout_split(CFG, last_week), holdout_split(CFG, this_week)
    ids = this_week["id"]
    held_out_before = set(last_week["id"][before.x_test.index])
    held_out_after = set(ids[after.x_test.index])
    trained_before = set(last_week["id"][before.x_train.index])
    assert held_out_before <= held_out_after
    assert not trained_before & held_out_after
    assert 0.2 < len(after.x_test) / len(this_week) < 0.3  # test_size 0.25
    assert "id" not in after.x_test.columns  # the key is not a feature


def test_a_split_that_leaves_one_class_out_is_refused(frame) -> None:
    cfg = CFG.model_copy(update={"holdout": CFG.holdout.model_copy(update={"test_size": 0.06})})
    few = frame[(frame["is_fraud"] == 0) | (frame.index < 200)]  # a handful of positives
    rare = few.assign(is_fraud=np.where(few.index.isin(few.index[few["is_fraud"] == 1][:10]), 1, 0))
    with pytest.raises(DataValidationError, match="holds only one class"):
        data.validate(cfg, rare)
