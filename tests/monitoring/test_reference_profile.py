"""The evaluate phase profiles what the model was trained on, and the registry keeps it with
the version: small, and enough to check drift without the training rows."""

from __future__ import annotations

import json

from modelcycle.monitoring.profiles import PROFILE_BINS


def test_the_registered_version_carries_a_compact_profile(monitored):
    profile = monitored.profile
    stored = monitored.registry.profile("fraud", 1)
    assert len(json.dumps(stored)) < 40_000  # kilobytes, not the 8,000 rows
    assert [c.name for c in profile.columns] == [
        "amount", "customer_age", "account_age_days", "tx_last_24h", "distance_from_home_km",
        "channel", "merchant_category", "country"]
    amount = profile.column("amount")
    assert amount.kind == "numeric" and PROFILE_BINS <= len(amount.edges) <= PROFILE_BINS + 11
    assert amount.cdf[-1] == 1.0 and amount.edges == sorted(amount.edges)
    age = profile.column("customer_age")
    assert 0.02 < age.missing_rate < 0.06  # the generator blanks 4% of ages
    assert profile.column("tx_last_24h").values is not None  # a count: few values, kept one by one
    channel = profile.column("channel")
    assert channel.kind == "categorical" and set(channel.categories) == {"pos", "online", "atm"}
    assert profile.score_kind == "positive_class_probability" and profile.classes == ["0", "1"]
    assert profile.test_metrics["roc_auc"] > 0.8
    assert profile.goal[0].metric == "roc_auc"


def test_a_version_registered_without_a_profile_has_none(monitored, tmp_path):
    from modelcycle.registry import Registry

    registry = Registry(tmp_path / "registry")
    registry.register("plain", monitored.model, lineage={}, params={}, metrics={})
    assert registry.profile("plain") is None
