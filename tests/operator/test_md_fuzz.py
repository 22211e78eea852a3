"""Random ModelDeployment specs (Hypothesis) against the real API server and operator:
each is either refused by the API server with a message naming the field, or reconciled
to Ready. Nothing in between: no spec the schema lets in may leave the operator stuck."""

from __future__ import annotations

import secrets

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modeldeployments import ModelDeployments, OperatorProcess

from property_cases import CASES

pytestmark = pytest.mark.cluster

text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=0, max_size=20)
versions = st.one_of(st.integers(-3, 10**6), text, st.floats(allow_nan=False, allow_infinity=False), st.none())
numbers = st.one_of(st.integers(-5, 200), st.floats(-1, 150, allow_nan=False), text)
side = st.fixed_dictionaries(
    {"version": versions, "image": st.one_of(text, st.just("fraud:3"))},
    optional={"replicas": st.one_of(st.integers(-2, 3), text), "mirrorPercent": numbers,
              "resources": st.fixed_dictionaries({}, optional={"requests": st.dictionaries(
                  st.sampled_from(["cpu", "memory"]), st.one_of(st.sampled_from(["100m", "64Mi", "1"]), text),
                  max_size=2)})},
)
plausible_side = st.fixed_dictionaries(
    {"version": st.one_of(st.integers(1, 20), st.sampled_from(["3", "4", "v5", "2026-11-29"])),
     "image": st.sampled_from(["fraud:3", "registry.example.com/fraud:4-abc"])},
    optional={"replicas": st.integers(1, 3)},
)
plausible_shadow = st.fixed_dictionaries(
    {"version": st.one_of(st.integers(1, 20), st.sampled_from(["4", "v6"])), "image": st.just("fraud:4")},
    optional={"replicas": st.integers(1, 3), "mirrorPercent": st.floats(0, 100, allow_nan=False),
              "approved": st.booleans()},
)
plausible_specs = st.fixed_dictionaries(
    {"model": st.sampled_from(["fraud", "churn-v2"]), "production": plausible_side},
    optional={
        "shadow": plausible_shadow,
        "promotion": st.fixed_dictionaries({}, optional={
            "mode": st.sampled_from(["auto", "manual"]), "minRequests": st.integers(1, 10**6),
            "minAgreement": st.floats(0, 1), "maxLatencyRatio": st.floats(0, 10), "maxErrorRate": st.floats(0, 1),
            "minDuration": st.sampled_from(["1s", "10m", "2h", "90m"])}),
    },
)
wild_specs = st.fixed_dictionaries(
    {"model": st.one_of(st.just("fraud"), text), "production": side},
    optional={
        "shadow": side,
        "promotion": st.fixed_dictionaries({}, optional={
            "mode": st.one_of(st.sampled_from(["auto", "manual"]), text), "minRequests": numbers,
            "minAgreement": numbers, "maxLatencyRatio": numbers, "maxErrorRate": numbers,
            "minDuration": st.one_of(st.sampled_from(["1s", "10m", "2h"]), text)}),
        "unknownField": text,
    },
)
specs = st.one_of(plausible_specs, wild_specs)


def test_random_specs_are_refused_with_a_field_or_become_ready(mds: ModelDeployments, operator: OperatorProcess):
    outcomes = {"refused": 0, "ready": 0}

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(spec=specs)
    def check(spec):
        CASES["ModelDeployment: random specs on the API server"] += 1
        name = f"fuzz-{secrets.token_hex(3)}"
        manifest = {"apiVersion": "modelcycle.io/v1alpha1", "kind": "ModelDeployment",
                    "metadata": {"name": name, "namespace": mds.namespace}, "spec": spec}
        result = mds.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=False)
        if result.returncode != 0:
            outcomes["refused"] += 1
            assert "spec." in result.stderr or "unknown field" in result.stderr, result.stderr
            return
        try:
            mds.wait_condition(name, "Ready", timeout=30)
            outcomes["ready"] += 1
        except AssertionError as error:
            stored = mds.get(name)
            raise AssertionError(f"admitted but not Ready: {stored['spec']}\n{stored.get('status')}\n"
                                 f"operator log:\n{operator.tail()}") from error
        finally:
            mds.cluster.kubectl("delete", "md", name, "-n", mds.namespace, "--wait=false", check=False)

    check()
    print(f"random ModelDeployment specs: {outcomes}")
    assert outcomes["refused"] and outcomes["ready"], f"the generator must reach both outcomes: {outcomes}"
