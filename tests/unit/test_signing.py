from __future__ import annotations

import pytest

from include.promotion.airflow_run import RunRef
from include.promotion.errors import UntrustedValue
from include.promotion.signing import Kind, sign, verify

RUN = RunRef("model_promotion__m", "manual__1")


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMOTION_SIGNING_KEY", "k" * 40)


def test_a_signed_value_verifies_in_its_own_run_and_kind() -> None:
    payload = {"passed": False, "metrics": {"roc_auc": 0.5}, "reasons": ["roc_auc too low"]}
    assert verify(Kind.EVALUATION, RUN, sign(Kind.EVALUATION, RUN, payload)) == payload


@pytest.mark.parametrize(
    ("kind", "run", "edit"),
    [
        (Kind.EVALUATION, RUN, {"passed": True}),  # an edited verdict
        (Kind.TRAINING, RUN, {}),  # another kind of value
        (Kind.EVALUATION, RunRef("model_promotion__m", "manual__2"), {}),  # another run
        (Kind.EVALUATION, RunRef("model_promotion__other", "manual__1"), {}),  # another model's DAG
    ],
)
def test_an_edited_or_transplanted_value_is_refused(kind: Kind, run: RunRef, edit: dict) -> None:
    signed = sign(Kind.EVALUATION, RUN, {"passed": False})
    with pytest.raises(UntrustedValue, match="does not match its signature"):
        verify(kind, run, {**signed, **edit})


def test_an_unsigned_value_is_refused() -> None:
    with pytest.raises(UntrustedValue, match="carries no signature"):
        verify(Kind.EVALUATION, RUN, {"passed": True})


def test_another_key_does_not_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    signed = sign(Kind.DATA, RUN, {"rows": 10})
    monkeypatch.setenv("PROMOTION_SIGNING_KEY", "x" * 40)
    with pytest.raises(UntrustedValue):
        verify(Kind.DATA, RUN, signed)


def test_a_missing_or_short_key_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMOTION_SIGNING_KEY", "short")
    with pytest.raises(RuntimeError, match="PROMOTION_SIGNING_KEY is not set"):
        sign(Kind.DATA, RUN, {"rows": 10})
