"""Monitoring: what the served models did, whether a shadow model does it as well, and
whether production still sees the world it was trained for.

`predictions` is the prediction log the gateway writes (every request with production's and
the shadow's answers, plus label feedback); `shadow` compares the two sides from that log and
returns a verdict against a policy. `profiles` is the reference profile evaluation stores
with each model version; `stattests` the drift tests; `drift` the per-column and data-set
drift; `quality` data quality of live traffic; `performance` the live metrics on labelled
rows; `monitors` puts them together into one verdict, from a data file or the prediction log,
and `reports` draws it as an HTML page.
"""
