"""Monitoring: what the served models did, and whether a shadow model does it as well.

`predictions` is the prediction log the gateway writes (every request with production's and
the shadow's answers, plus label feedback); `shadow` compares the two sides from that log and
returns a verdict against a policy.
"""
