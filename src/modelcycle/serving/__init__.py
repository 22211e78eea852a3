"""Serving: the adapters that put a registered model behind HTTP.

`gateway` is the async front door: it forwards to production, mirrors a sample to a shadow
and writes both answers to the prediction log of `modelcycle.monitoring`.
"""
