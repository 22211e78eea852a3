"""`name@ref` is how the CLI names a version: a number, an alias, or the latest."""

import pytest

from modelcycle.registry import InvalidName, parse_model_ref


@pytest.mark.parametrize(("text", "expected"), [
    ("fraud@champion", ("fraud", "champion")),
    ("fraud@3", ("fraud", 3)),
    ("fraud", ("fraud", "latest")),
    ("fraud@latest", ("fraud", "latest")),
])
def test_refs_parse(text, expected):
    assert parse_model_ref(text) == expected


@pytest.mark.parametrize("text", ["Fraud@champion", "fraud@", "fraud@Champion", "@3", "fraud@a@b"])
def test_bad_refs_are_refused(text):
    with pytest.raises(InvalidName):
        parse_model_ref(text)
