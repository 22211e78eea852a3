"""The ModelDeployment operator: production and shadow versions of a model, and promotion.

Importing this package registers the kopf handlers (`handlers`), so both
`python -m modelcycle.operator` (namespaces from `MODELCYCLE_NAMESPACES`) and
`kopf run -m modelcycle.operator --standalone -n NAMESPACE` (or `--all-namespaces`) run it.
Install the CRD first (`charts/modelcycle/crds/`): the operator does not watch for CRDs
appearing later.

Settings of the process are `MODELCYCLE_*` environment variables (`settings`). One
setting lives on the ModelDeployment: the annotation `modelcycle.io/gateway-url` overrides
where the operator reads the shadow comparison (normally
`http://<name>-gateway.<namespace>.svc:8080`), for an operator running outside the
cluster or a gateway run by hand; the tests use it to point at a real local gateway.

The pieces: `resources` (the children's manifests), `statuses` (conditions from the
children), `promotion` (the verdict, and how a promotion edits the spec), `reconciling`
(one level-triggered loop per ModelDeployment), `clients` (the API calls), `settings`
(the operator's environment). `modelcycle md ...` lives with the other commands
(`modelcycle.cli.md`).
"""

from modelcycle.operator import handlers

__all__ = ["handlers"]
