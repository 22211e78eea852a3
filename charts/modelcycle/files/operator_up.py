"""`helm test`: is the operator up? Its Deployment has an available replica of its current
spec, and the API server serves ModelDeployments (the CRD is installed and established).

Run by the chart's test Pod in the operator image, as a ServiceAccount that may only get
that Deployment and list ModelDeployments: `python -c "$(cat operator_up.py)" NAMESPACE
DEPLOYMENT [SECONDS]`. It logs in the way the operator does (the pod's ServiceAccount, else
$KUBECONFIG), retries until SECONDS have passed (default 60), and exits 1 with the reason.
"""

import base64
import json
import ssl
import sys
import time
import urllib.error
import urllib.request

import kopf

namespace, deployment = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 60)

settings = kopf.OperatorSettings()
info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
if info is None or not info.token:
    sys.exit("not up: no ServiceAccount token and no kubeconfig with a token to ask the API server with")
ca = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
if ca and not ca.lstrip().startswith("-----"):
    ca = base64.b64decode(ca).decode()  # kubeconfig *-data fields are base64 of PEM
context = ssl.create_default_context(cafile=str(info.ca_path) if info.ca_path else None, cadata=ca or None)


def get(path: str) -> dict:
    request = urllib.request.Request(info.server.rstrip("/") + path,
                                     headers={"Authorization": f"Bearer {info.token}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body or error.reason
        raise RuntimeError(f"GET {path}: HTTP {error.code}: {message}") from None


def operator_available() -> str:
    found = get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}")
    status = found.get("status", {})
    if status.get("observedGeneration", 0) < found["metadata"].get("generation", 0):
        raise RuntimeError(f"deployment {deployment}: its controller has not seen the current spec yet")
    if not status.get("availableReplicas"):
        why = "scaled to 0" if found["spec"].get("replicas") == 0 else f"{status.get('replicas', 0)} replica(s) in all"
        raise RuntimeError(f"deployment {deployment}: no available replica ({why})")
    return f"deployment {deployment}: {status['availableReplicas']} available replica(s)"


def modeldeployments_served() -> str:
    found = get(f"/apis/modelcycle.io/v1alpha1/namespaces/{namespace}/modeldeployments?limit=1")
    return f"ModelDeployments are served ({found['apiVersion']})"


for check in (operator_available, modeldeployments_served):
    while True:
        try:
            print(f"ok: {check()}", flush=True)
            break
        except (RuntimeError, OSError) as problem:
            if time.monotonic() > deadline:
                sys.exit(f"not up: {problem}")
            time.sleep(2)
print("the operator is up")
