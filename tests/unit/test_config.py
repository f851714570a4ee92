from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from include.promotion.config import dag_id_for, get_model_config, load_model_configs, parse_model_config
from include.promotion.errors import ModelConfigError, UnknownModel

DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def test_the_demo_config_is_valid() -> None:
    cfg = parse_model_config(DEMO)
    assert cfg.name == "fraud-detector"
    assert cfg.dag_id == "model_promotion__fraud_detector"
    assert cfg.data.source == "postgres" and cfg.data.conn_id == "promotion_db"
    assert set(cfg.gates) <= {"roc_auc", "f1", "average_precision", "precision", "recall"}


@pytest.mark.parametrize(
    ("name", "dag_id"), [("fraud-detector", "model_promotion__fraud_detector"), ("a.b_c", "model_promotion__a_b_c")]
)
def test_dag_ids_replace_non_alphanumerics(name: str, dag_id: str) -> None:
    assert dag_id_for(name) == dag_id


def test_a_typo_in_a_field_name_names_the_file_the_field_and_the_fix(tmp_path: Path, demo: dict) -> None:
    demo["estimator"]["parms"] = demo["estimator"].pop("params")
    path = write(tmp_path, "typo.yaml", demo)
    with pytest.raises(ModelConfigError) as err:
        parse_model_config(path)
    assert "typo.yaml" in str(err.value)
    assert "estimator.parms" in str(err.value)
    assert "did you mean 'params'" in str(err.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("target"), "field 'target': required field is missing"),
        (lambda d: d["gates"].update(roc_auc=1.5), "between 0 and 1"),
        (lambda d: d["gates"].update(accuracy=0.5), "gates.accuracy"),
        (lambda d: d.update(name="bad name!"), "field 'name'"),
        (lambda d: d["approval"].update(reviewers=[]), "approval.reviewers"),
        (lambda d: d["data"].update(source="s3"), "field 'data'"),
        (lambda d: d.update(features=[*d["features"], "is_fraud"]), "also listed in features"),
        (lambda d: d["holdout"].update(key="amount"), "holdout.key 'amount' is also a feature"),
    ],
)
def test_malformed_configs_are_refused_with_the_field(tmp_path: Path, demo: dict, change, expected: str) -> None:
    change(demo)
    with pytest.raises(ModelConfigError, match=r"bad\.yaml") as err:
        parse_model_config(write(tmp_path, "bad.yaml", demo))
    assert expected in str(err.value)


def test_one_broken_file_does_not_hide_the_others(tmp_path: Path, demo: dict) -> None:
    write(tmp_path, "good.yaml", demo)
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    loaded = load_model_configs(tmp_path)
    assert list(loaded.models) == ["fraud-detector"]
    assert list(loaded.errors) == ["broken.yaml"]
    assert "not valid YAML" in loaded.errors["broken.yaml"]


@pytest.mark.parametrize("second_name", ["fraud-detector", "fraud_detector"])
def test_two_files_claiming_one_model_both_fail_and_the_others_keep_their_dags(
    tmp_path: Path, demo: dict, second_name: str
) -> None:
    write(tmp_path, "a-takeover.yaml", {**demo, "name": second_name, "approval": {"reviewers": ["carol"]}})
    write(tmp_path, "fraud-detector.yaml", demo)
    write(tmp_path, "other.yaml", {**demo, "name": "other-model"})
    loaded = load_model_configs(tmp_path)
    assert list(loaded.models) == ["other-model"]
    assert sorted(loaded.errors) == ["a-takeover.yaml", "fraud-detector.yaml"]
    assert "also claimed by fraud-detector.yaml" in loaded.errors["a-takeover.yaml"]
    assert "also claimed by a-takeover.yaml" in loaded.errors["fraud-detector.yaml"]


def test_an_edited_file_is_read_again(tmp_path: Path, demo: dict) -> None:
    path = write(tmp_path, "m.yaml", demo)
    assert load_model_configs(tmp_path).models["fraud-detector"].approval.reviewers == ["alice", "bob"]
    path.write_text(yaml.safe_dump({**demo, "approval": {"reviewers": ["dave", "erin", "frank"]}}))
    assert load_model_configs(tmp_path).models["fraud-detector"].approval.reviewers == ["dave", "erin", "frank"]


def test_on_call_defaults_to_the_reviewers(tmp_path: Path, demo: dict) -> None:
    demo.pop("rollback", None)
    cfg = parse_model_config(write(tmp_path, "m.yaml", demo))
    assert cfg.rollback_on_call == ["alice", "bob"]
    demo["rollback"] = {"on_call": ["carol"]}
    assert parse_model_config(write(tmp_path, "m.yaml", demo)).rollback_on_call == ["carol"]


@pytest.mark.parametrize(("override", "expected"), [("", "@weekly"), ("none", None), ("@daily", "@daily")])
def test_the_schedule_override_replaces_every_models_schedule(
    tmp_path: Path, demo: dict, monkeypatch: pytest.MonkeyPatch, override: str, expected: str | None
) -> None:
    monkeypatch.setenv("PROMOTION_SCHEDULE_OVERRIDE", override)
    assert parse_model_config(write(tmp_path, "m.yaml", demo)).effective_schedule == expected


def test_an_unknown_model_lists_the_configured_ones(tmp_path: Path, demo: dict) -> None:
    write(tmp_path, "good.yaml", demo)
    with pytest.raises(UnknownModel, match=r"unknown model 'nope'.*Configured models: fraud-detector"):
        get_model_config("nope", tmp_path)


def test_an_edit_that_keeps_size_and_modification_time_is_still_read(tmp_path: Path, demo: dict) -> None:
    path = write(tmp_path, "m.yaml", {**demo, "owner": "team-a"})
    before = path.stat()
    assert load_model_configs(tmp_path).models["fraud-detector"].owner == "team-a"
    path.write_text(path.read_text().replace("team-a", "team-b"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert load_model_configs(tmp_path).models["fraud-detector"].owner == "team-b"


def test_a_file_that_is_not_utf8_is_reported_and_does_not_hide_the_others(tmp_path: Path, demo: dict) -> None:
    write(tmp_path, "good.yaml", demo)
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    loaded = load_model_configs(tmp_path)
    assert list(loaded.models) == ["fraud-detector"]
    assert "latin1.yaml: not UTF-8 text" in loaded.errors["latin1.yaml"]


@pytest.mark.parametrize(
    ("schedule", "cron", "assets"),
    [
        ("@weekly", "@weekly", []),
        (None, None, []),
        ({"cron": "0 3 * * *", "assets": ["demo-labelled-transactions"]}, "0 3 * * *", ["demo-labelled-transactions"]),
        ({"assets": ["team/labels.v2"]}, None, ["team/labels.v2"]),
    ],
)
def test_a_schedule_is_a_cron_null_or_a_cron_and_assets(
    tmp_path: Path, demo: dict, monkeypatch: pytest.MonkeyPatch, schedule, cron, assets
) -> None:
    monkeypatch.delenv("PROMOTION_SCHEDULE_OVERRIDE", raising=False)
    cfg = parse_model_config(write(tmp_path, "m.yaml", {**demo, "schedule": schedule}))
    assert (cfg.schedule.cron, cfg.schedule.assets) == (cron, assets)
    assert (cfg.effective_schedule, cfg.schedule_assets) == (cron, assets)


def test_a_missing_schedule_is_weekly(tmp_path: Path, demo: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMOTION_SCHEDULE_OVERRIDE", raising=False)
    demo.pop("schedule")
    cfg = parse_model_config(write(tmp_path, "m.yaml", demo))
    assert (cfg.effective_schedule, cfg.schedule_assets) == ("@weekly", [])


def test_the_demo_listens_to_its_labelled_data_asset() -> None:
    cfg = parse_model_config(DEMO)
    assert (cfg.schedule.cron, cfg.schedule.assets) == ("@weekly", ["demo-labelled-transactions"])


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"cron": "@weekly", "asset": ["x"]}, "unknown field 'asset'; did you mean 'assets'?"),
        ({"assets": "labels"}, "field 'schedule.assets': Input should be a valid list"),
        ({"assets": ["s3://bucket/key"]}, "'s3://bucket/key' is not an asset name"),
        ({"assets": ["", "x"]}, "field 'schedule.assets'"),
        ({"assets": ["a", "a"]}, "asset names must be distinct"),
        ({"assets": [f"a{i}" for i in range(11)]}, "at most 10 items"),
        ({"assets": ["model-retrain/other"]}, "set health.on_breach: retrain"),
        ({"cron": "@once", "assets": ["x"]}, "'@once' is not a repeating schedule"),
        (["@weekly"], "field 'schedule': Value error, expected a cron string ('@weekly'), null"),
        (7, "got int 7"),
    ],
)
def test_a_malformed_schedule_names_the_field_and_the_fix(tmp_path: Path, demo: dict, schedule, expected: str) -> None:
    with pytest.raises(ModelConfigError, match=r"bad\.yaml") as err:
        parse_model_config(write(tmp_path, "bad.yaml", {**demo, "schedule": schedule}))
    assert expected in str(err.value)


YAML_DOCUMENTS = [
    DEMO.read_text(),
    "name: m\nflags: [yes, no, on, Off, ~, null, true]\nints: [0x1F, 0o17, 1_000, -3, 1:30]\n"
    "floats: [.5, 1e3, .inf, -.NaN]",
    "base: &b {a: 1, b: [x, y]}\nother: *b\n",  # an alias: PyYAML shares the object
    "base: &b {a: 1}\nmerged:\n  <<: *b\n  c: 2\n",  # a merge key
    "when: 2026-01-01\nraw: !!binary aGk=\n",  # a timestamp and bytes
    "? [a, b]\n: nested key\n",  # a key PyYAML cannot hash
    "loop: &l [*l]\n",  # a structure that contains itself
    "a: 1\na: 2\n",  # a repeated key: the last wins
    "s: !!str [a]\n",  # a tag on the wrong kind of node
    "",
    "- just\n- a list\n",
    "a: [unclosed\n",
    "one: 1\n---\ntwo: 2\n",
    "x: !!python/object:os.system {}\n",
]


@pytest.mark.parametrize("text", YAML_DOCUMENTS, ids=range(len(YAML_DOCUMENTS)))
def test_the_fast_yaml_load_gives_what_pyyaml_gives_or_the_same_error(text: str) -> None:
    from include.promotion.config import _YAML_LOADER, _load_yaml

    try:
        expected: object = yaml.load(text, Loader=_YAML_LOADER)
    except (yaml.YAMLError, TypeError) as exc:
        with pytest.raises(type(exc)) as raised:
            _load_yaml(text)
        assert str(raised.value) == str(exc)
        return
    got = _load_yaml(text)
    if text.startswith("loop"):  # equality cannot compare a list that contains itself: compare its shape
        assert got["loop"][0] is got["loop"]
        return
    assert got == expected
    assert repr(got) == repr(expected)  # the same types too (1 is not 1.0 is not True)
