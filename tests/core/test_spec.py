"""The spec loads, and every bad key or value is reported with its YAML path."""

import pytest
import yaml

from fraud_example import EXAMPLE, small_spec_dict
from modelcycle.spec import SpecError, load_spec, parse_spec


def test_example_spec_loads_and_resolves_base_dir():
    spec = load_spec(EXAMPLE / "modelcycle.yaml")
    assert spec.name == "fraud"
    assert spec.base_dir == EXAMPLE.resolve()
    assert "amount" in spec.features.input_columns and "ts" in spec.features.input_columns
    assert spec.data.target not in spec.features.input_columns


def test_spec_hash_is_stable_and_sensitive():
    a = parse_spec(small_spec_dict())
    b = parse_spec(small_spec_dict())
    changed = small_spec_dict()
    changed["goal"]["primary"]["min"] = 0.9
    assert a.spec_hash() == b.spec_hash()
    assert a.spec_hash() != parse_spec(changed).spec_hash()


def _errors(data) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="modelcycle.yaml")
    return info.value.problems


def test_unknown_key_names_its_path():
    data = small_spec_dict()
    data["training"]["candidates"][1]["serach_space"] = {}
    problems = _errors(data)
    assert any(p.startswith("training.candidates[1].serach_space: unknown key") for p in problems), problems


def test_wrong_type_says_expected_and_found():
    data = small_spec_dict()
    data["split"]["test_size"] = "twenty percent"
    (problem,) = _errors(data)
    assert problem.startswith("split.test_size: expected a valid number")
    assert "'twenty percent'" in problem


def test_cross_field_rules():
    data = small_spec_dict()
    data["goal"]["primary"]["metric"] = "rmse"
    data["features"]["derived"].append({"name": "x", "op": "ratio", "inputs": ["amount", "nope"]})
    problems = _errors(data)
    assert any(p.startswith("goal.primary.metric: expected one of") and "'rmse'" in p for p in problems)
    assert any("features.derived[2].inputs: 'nope' is not a declared numeric column" in p for p in problems)


def test_missing_required_and_bad_name(tmp_path):
    data = small_spec_dict()
    del data["data"]["target"]
    data["name"] = "Fraud Model"
    problems = _errors(data)
    assert "data.target: required key is missing" in problems
    assert any(p.startswith("name: expected a lowercase DNS label") for p in problems)


def test_load_spec_reports_file_and_yaml_errors(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text(yaml.safe_dump(["a", "list"]))
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(bad)
