"""The spec parser on any YAML: a valid spec, or a `SpecError` whose every line names a
path; never a traceback of another kind."""

import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from property_cases import CASES
from fraud_example import small_spec_dict
from modelcycle.spec import SpecError, spec_from_text

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                      max_leaves=12)
KEYS = list(small_spec_dict())
# A path like `training.candidates[1].search_space`, or (top level), or a YAML parse error.
PROBLEM = re.compile(r"^(\(top level\)|not valid YAML|[A-Za-z_][\w.\[\]-]*(\.[\w\[\]-]+)*|[\w.\[\]-]+):? ")


def _paths(spec: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in spec.items():
        here = f"{prefix}.{key}" if prefix else key
        out.append(here)
        if isinstance(value, dict):
            out += _paths(value, here)
    return out


PATHS = _paths(small_spec_dict())


def _parse(text: str, name: str) -> None:
    CASES[name] += 1
    try:
        spec_from_text(text)
    except SpecError as error:
        assert error.problems, "a SpecError says what is wrong"
        for line in error.problems:
            assert line.strip(), "no empty problem lines"
            assert ":" in line, f"a problem names where it is: {line!r}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(values, st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=6)))
def test_any_yaml_document_gives_a_spec_or_errors_with_paths(document):
    _parse(yaml.safe_dump(document), "spec parser: random documents")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=values)
def test_one_field_of_a_good_spec_replaced_by_anything(path, value):
    spec = small_spec_dict()
    *parents, leaf = path.split(".")
    target = spec
    for part in parents:
        target = target[part]
    target[leaf] = value
    _parse(yaml.safe_dump(spec), "spec parser: one field of the example replaced")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_spec_or_errors(text):
    _parse(text, "spec parser: arbitrary text")
