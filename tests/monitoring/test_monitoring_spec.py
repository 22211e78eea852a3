"""The spec's `monitoring:` section: validated with errors that name the field."""

from __future__ import annotations

import pytest

from fraud_example import small_spec_dict
from modelcycle.spec import SpecError, parse_spec


def _spec(monitoring: dict):
    return parse_spec({**small_spec_dict(), "monitoring": monitoring})


def test_a_valid_section_is_read_with_its_defaults():
    spec = _spec({"window": "1h30m", "columns": {"amount": {"stattest": "psi", "threshold": 0.2},
                                                  "channel": {"min_effect": 0.05}}})
    assert spec.monitoring.window_seconds == 5400
    assert spec.monitoring.correction == "fdr" and spec.monitoring.drift_share == 0.5
    assert spec.monitoring.columns["amount"].stattest == "psi"
    assert parse_spec(small_spec_dict()).monitoring.window == "24h"


@pytest.mark.parametrize(("monitoring", "message"), [
    ({"columns": {"amonut": {"stattest": "ks"}}}, "monitoring.columns.amonut: expected a numeric or categorical input column"),
    ({"columns": {"channel": {"stattest": "ks"}}}, "monitoring.columns.channel.stattest: ks needs a numeric column"),
    ({"columns": {"amount": {"stattest": "anderson"}}}, "monitoring.columns.amount.stattest: expected 'ks', 'chisquare'"),
    ({"correction": "holm"}, "monitoring.correction: expected 'fdr', 'bonferroni' or 'none', found 'holm'"),
    ({"window": "a day"}, "monitoring.window"),
    ({"drift_share": 0}, "monitoring.drift_share"),
    ({"columns": {"amount": {"threshold": -1}}}, "monitoring.columns.amount.threshold"),
])
def test_a_bad_section_names_the_field(monitoring, message):
    with pytest.raises(SpecError) as error:
        _spec(monitoring)
    assert message in str(error.value)
