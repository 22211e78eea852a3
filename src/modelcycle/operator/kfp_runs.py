"""Retraining runs on Kubeflow Pipelines, through the KFP v2beta1 API.

Where a cluster has Kubeflow Pipelines, a breach can retrain there instead of in a
Kubernetes Job: the run shows in the KFP UI with its graph, logs and artifacts, next to the
runs a person started. The operator starts one run of modelcycle's training pipeline and
then polls it; this module is the part that talks to KFP, through the SDK's `kfp.Client`.

The pipeline is named in `spec.monitoring.retrain.pipeline` in one of two ways:

- the display name of a pipeline already uploaded to KFP: the run uses its newest version,
  so uploading a new version changes what the next retraining runs;
- the http(s) URL of a compiled package (`modelcycle compile -o training.yaml`): the
  operator downloads it and the run carries the pipeline spec itself. Nothing is uploaded,
  so retrainings leave no pipelines or versions behind, and each run records exactly the
  spec it ran.

A run's display name is its identity. The operator may crash between starting a run and
recording it in the ModelDeployment's status, so `submit` first looks in the experiment for
a run of that name and returns it rather than starting a second one; the caller makes the
name unique per retraining.

KFP does not hand back the pipeline's output parameters: a v2beta1 run's `run_details`
lists its tasks with their states and the ids of their input and output *artifacts*, while
parameters such as `model_version` live only in ML Metadata, which the KFP API server does
not expose. `RunState.model_version` is therefore `None` for a KFP run, and the operator
finds the retrained version in the registry, where the pipeline registered it.

Every call blocks (`kfp.Client` is synchronous); the operator calls them in an executor
thread. What goes wrong is raised as `KfpRunError`, naming the host and what was expected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal, TypeAlias

import kfp_server_api
import urllib3
import yaml
from google.protobuf import json_format
from kfp.client import Client, ServiceAccountTokenVolumeCredentials

RunPhase: TypeAlias = Literal["pending", "running", "succeeded", "failed", "other"]

# KFP's V2beta1RuntimeState, in the operator's words. A canceled run will produce no
# model, so it is as final as a failed one; CANCELING, PAUSED and SKIPPED are "other".
_PHASES: dict[str, RunPhase] = {
    kfp_server_api.V2beta1RuntimeState.PENDING: "pending",
    kfp_server_api.V2beta1RuntimeState.RUNNING: "running",
    kfp_server_api.V2beta1RuntimeState.SUCCEEDED: "succeeded",
    kfp_server_api.V2beta1RuntimeState.FAILED: "failed",
    kfp_server_api.V2beta1RuntimeState.CANCELED: "failed",
}

# What `kfp.Client`'s package reader accepts (kfp.client.client._extract_pipeline_yaml).
_PACKAGE_SUFFIXES = (".yaml", ".yml", ".tar.gz", ".tgz", ".zip")

_DOWNLOAD_TIMEOUT = 60.0
"""Seconds to wait for a compiled package: a package is a few hundred kilobytes at most."""


class KfpRunError(RuntimeError):
    """KFP could not start or report a run; the message says what was expected and found."""


@dataclasses.dataclass(frozen=True)
class RunState:
    """Where a retraining run on KFP stands."""

    run_id: str
    state: RunPhase
    """`pending` and `running` will move on; `succeeded` and `failed` are final; `other` is
    a state the operator need not act on (canceling, paused, skipped, not yet known)."""
    model_version: str | None
    """The pipeline's `model_version` output ("name@N"). Always `None` on KFP: the v2beta1
    API does not carry output parameters (see the module's docstring)."""
    message: str
    """One sentence for a person: the run's state and, when it failed, why."""


class KfpRunner:
    """Starts and follows runs of modelcycle's training pipeline on one KFP endpoint.

    `host` is the KFP API's base URL (`http://ml-pipeline.kubeflow:8888` in the cluster).
    `namespace` is the KFP profile namespace in a multi-user deployment; leave it `None`
    for a single-user one. Without it, `kfp.Client` asks the health endpoint whether KFP is
    multi-user when it connects (five tries, five seconds apart, on an error answer), and if
    so takes the pod's own namespace and writes it to `~/.config/kfp/context.json`.
    `token` is a bearer token; `token_file` a file holding one, read on every request so a
    projected service-account token may rotate. `ssl_ca_cert` is a CA bundle for https.

    Connecting is deferred to the first call, so constructing a runner never blocks.
    """

    def __init__(
        self,
        host: str,
        *,
        namespace: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        ssl_ca_cert: str | None = None,
    ) -> None:
        if token is not None and token_file is not None:
            raise ValueError("give the KFP token or the file that holds it, not both")
        if not host.startswith(("http://", "https://")):
            raise ValueError(f"the KFP host must be an http(s) URL, got {host!r}")
        self.host = host.rstrip("/")
        self.namespace = namespace
        self._token = token
        self._token_file = token_file
        self._ssl_ca_cert = ssl_ca_cert
        self._client: Client | None = None
        self._connecting = threading.Lock()

    def submit(self, *, pipeline: str, run_name: str, experiment: str, parameters: Mapping[str, str]) -> str:
        """Start a run of `pipeline` named `run_name` in `experiment` (made if missing) and
        return its id; if the experiment already has a run of that name, return that one's."""
        with self._errors(f"starting run {run_name!r} of pipeline {pipeline!r}"):
            client = self._connect()
            experiment_id = client.create_experiment(experiment, namespace=self.namespace).experiment_id
            runs = client.list_runs(experiment_id=experiment_id, filter=_display_name_is(run_name)).runs
            if runs:
                return runs[0].run_id
            if pipeline.startswith(("http://", "https://")):
                with _downloaded(pipeline) as package:
                    run = client.run_pipeline(
                        experiment_id=experiment_id,
                        job_name=run_name,
                        pipeline_package_path=str(package),
                        params=dict(parameters),
                    )
            else:
                pipeline_id, version_id = self._newest_version(client, pipeline)
                run = client.run_pipeline(
                    experiment_id=experiment_id,
                    job_name=run_name,
                    pipeline_id=pipeline_id,
                    version_id=version_id,
                    params=dict(parameters),
                )
            return run.run_id

    def state(self, run_id: str) -> RunState:
        """Where the run `run_id` stands."""
        with self._errors(f"reading run {run_id!r}"):
            run = self._connect().get_run(run_id)
        phase = _PHASES.get(run.state, "other")
        message = f"KFP run {run.display_name or run_id!r} is {(run.state or 'in an unknown state').lower()}"
        reason = _failure(run) if phase == "failed" else ""
        if reason:
            message += f": {reason}"
        return RunState(run_id=run_id, state=phase, model_version=None, message=message)

    def _connect(self) -> Client:
        with self._connecting:
            if self._client is None:
                credentials = ServiceAccountTokenVolumeCredentials(self._token_file) if self._token_file else None
                self._client = Client(
                    host=self.host,
                    existing_token=self._token,
                    credentials=credentials,
                    ssl_ca_cert=self._ssl_ca_cert,
                    # kfp.Client's default, which it reads as "not given"
                    namespace=self.namespace or "kubeflow",
                )
            return self._client

    def _newest_version(self, client: Client, name: str) -> tuple[str, str]:
        """The ids of the pipeline uploaded as `name` and of its newest version."""
        pipelines = client.list_pipelines(filter=_display_name_is(name), namespace=self.namespace).pipelines or []
        where = f" in namespace {self.namespace!r}" if self.namespace else ""
        if not pipelines:
            uploaded = client.list_pipelines(page_size=20, namespace=self.namespace).pipelines or []
            found = ", ".join(repr(p.display_name) for p in uploaded) or "none"
            raise KfpRunError(
                f"KFP at {self.host} has no pipeline named {name!r}{where}: expected the compiled training "
                f"pipeline uploaded under that name, or the http(s) URL of its package; pipelines found: {found}"
            )
        if len(pipelines) > 1:
            raise KfpRunError(f"KFP at {self.host} has {len(pipelines)} pipelines named {name!r}{where}, expected one")
        pipeline_id = pipelines[0].pipeline_id
        versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc").pipeline_versions
        if not versions:
            raise KfpRunError(f"KFP pipeline {name!r} at {self.host} has no version to run")
        return pipeline_id, versions[0].pipeline_version_id

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Raise what KFP or the network answered as a `KfpRunError` that names the host."""
        try:
            yield
        except kfp_server_api.ApiException as error:
            raise KfpRunError(f"{doing}: KFP at {self.host} {_answer(error)}") from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KfpRunError(f"{doing}: KFP at {self.host} is unreachable ({error})") from error
        except (ValueError, yaml.YAMLError, json_format.Error) as error:
            # kfp.Client's words for "more than one of that name" and "not a pipeline package"
            raise KfpRunError(f"{doing}: KFP at {self.host}: {error}") from error


def _display_name_is(name: str) -> str:
    """A v2beta1 list filter (kfp_server_api.V2beta1Filter, as JSON) on the display name."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "string_value": name}]})


def _answer(error: kfp_server_api.ApiException) -> str:
    """What the KFP API server answered, in words."""
    if error.status == 401:
        return "refused the credentials (401 Unauthorized): expected a valid bearer token (token or token_file)"
    if error.status == 403:
        return f"denied the request (403 Forbidden): {_server_message(error)}"
    if not error.status:
        return f"could not be reached ({error.reason})"
    return f"answered {error.status} {error.reason}: {_server_message(error)}"


def _server_message(error: kfp_server_api.ApiException) -> str:
    try:
        return json.loads(error.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(error.body or "")[:300]


def _failure(run: kfp_server_api.V2beta1Run) -> str:
    """Why the run failed: its own error, else its failed tasks' errors."""
    if run.error and run.error.message:
        return run.error.message
    tasks = run.run_details.task_details if run.run_details else None
    failed = [task for task in tasks or [] if task.state == kfp_server_api.V2beta1RuntimeState.FAILED]
    return "; ".join(
        f"task {task.display_name!r} failed" + (f" ({task.error.message})" if task.error and task.error.message else "")
        for task in failed
    )


@contextlib.contextmanager
def _downloaded(url: str) -> Iterator[Path]:
    """The compiled pipeline package at `url`, in a temporary file named like it."""
    name = Path(urllib.parse.urlsplit(url).path).name
    if not name.endswith(_PACKAGE_SUFFIXES):
        raise KfpRunError(f"the pipeline package {url} should end with one of {', '.join(_PACKAGE_SUFFIXES)}")
    with tempfile.TemporaryDirectory(prefix="modelcycle-kfp-") as directory:
        package = Path(directory) / name
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response:
                package.write_bytes(response.read())
        except (urllib.error.URLError, OSError) as error:
            raise KfpRunError(f"could not download the pipeline package {url}: {error}") from error
        yield package
