"""Serving: the adapters that put a registered model behind HTTP.

- `packaging` turns a registry version into a BentoML bento (artifact with its sha256, a
  modelcycle wheel built by hatchling, the generated Dockerfile) and records the bento tag
  and image name on the version.
- `contract` is the serving contract: what each route takes and answers, with examples, and
  the warnings an answer may carry.
- `bento` is the BentoML service: `/predict`, an adaptively batched `/predict_batch`,
  health, readiness and metrics; `requests` checks each record against the model's data
  schema so bad input gets a 4xx naming the field, and unusual input a warning.
- `model_server` is the same service for any registered version, read from the registry at
  start-up (one image for every version, KServe's storageUri pattern); the version's
  signature and sha256 are checked before it is unpickled.
- `gateway` is the async front door: it forwards to production, mirrors a sample to a shadow
  and writes both answers to the prediction log of `modelcycle.monitoring`.
- `local` runs production, the shadow and the gateway as local processes (`modelcycle serve`).
"""
