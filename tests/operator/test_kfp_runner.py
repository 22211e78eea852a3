"""A retraining on Kubeflow Pipelines starts the newest version of the uploaded training
pipeline (or a compiled package from a URL) with the four parameters, once per run name, and
its state is read back in the operator's words (`modelcycle.operator.kfp_runs`).

The runner talks through the real `kfp.Client` to `FakeKfpApi`, an HTTP server that checks
every request against kfp-server-api's own models."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import types
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kfp_server_api
import pytest
import yaml

from modelcycle.operator.kfp_runs import KfpRunError, KfpRunner
from modelcycle.pipelines import PIPELINE_NAME, compile_pipeline

PARAMETERS = {
    "spec_yaml": "name: fraud\n",
    "base_dir": "/data",
    "store_uri": "s3://store",
    "registry_uri": "s3://registry",
}
TOKEN = "kfp-token-7d2e"


class BadRequest(Exception):
    """A request the real KFP API server would refuse; the fake answers 400 with it."""


def _strict(data: Any, openapi_type: str, where: str) -> None:
    """Refuse `data` unless kfp-server-api's model `openapi_type` describes it: every key
    known, every value of the declared type, every enum value allowed."""
    if openapi_type == "object":
        return
    if openapi_type.startswith("list["):
        if not isinstance(data, list):
            raise BadRequest(f"{where}: expected a list, got {data!r}")
        for index, item in enumerate(data):
            _strict(item, openapi_type[5:-1], f"{where}[{index}]")
        return
    if openapi_type.startswith("dict("):
        if not isinstance(data, dict):
            raise BadRequest(f"{where}: expected a map, got {data!r}")
        for key, item in data.items():
            _strict(item, openapi_type.split(", ", 1)[1][:-1], f"{where}.{key}")
        return
    native = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str}
    if openapi_type in native:
        if not isinstance(data, native[openapi_type]):
            raise BadRequest(f"{where}: expected {openapi_type}, got {data!r}")
        return
    model = getattr(kfp_server_api.models, openapi_type)
    if hasattr(model, "allowable_values"):
        if data not in model.allowable_values:
            raise BadRequest(f"{where}: {data!r} is not one of {model.allowable_values}")
        return
    if not isinstance(data, dict):
        raise BadRequest(f"{where}: expected a {openapi_type} object, got {data!r}")
    fields = {model.attribute_map[attribute]: kind for attribute, kind in model.openapi_types.items()}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BadRequest(f"{where}: {openapi_type} has no field {', '.join(unknown)}")
    for key, item in data.items():
        _strict(item, fields[key], f"{where}.{key}")


def _model(raw: bytes | str, openapi_type: str) -> Any:
    """`raw` checked by `_strict`, then read by kfp-server-api's own deserializer."""
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise BadRequest(f"not JSON: {error}") from error
    _strict(data, openapi_type, openapi_type)
    return kfp_server_api.ApiClient().deserialize(types.SimpleNamespace(data=raw), openapi_type)


def _display_name_filter(raw: str | None) -> str | None:
    """The display name a list filter asks for. The real server reads the filter with
    protojson, so field names come snake_case or camelCase and the operation by name or
    number (kfp.Client's own `get_experiment` sends `stringValue` and `1`)."""
    if raw is None:
        return None
    predicates = json.loads(raw).get("predicates", [])
    for predicate in predicates:
        if "stringValue" in predicate:
            predicate["string_value"] = predicate.pop("stringValue")
        if predicate.get("operation") == 1:
            predicate["operation"] = "EQUALS"
    _strict({"predicates": predicates}, "V2beta1Filter", "filter")
    if [(p["operation"], p["key"]) for p in predicates] != [("EQUALS", "display_name")]:
        raise BadRequest(f"the fake understands only a filter on display_name EQUALS, got {raw}")
    return predicates[0]["string_value"]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeKfpApi(http.server.ThreadingHTTPServer):
    """A fake of the Kubeflow Pipelines v2beta1 REST API, for tests; it is not KFP.

    It keeps pipelines, versions, experiments and runs in dicts and serves only what
    `kfp.Client` calls for `KfpRunner`: healthz, pipelines and their versions (list),
    experiments (list, create), runs (list, create, get), plus the compiled training
    pipeline as a package at `/packages/training.yaml`. Every body and list filter is
    checked against kfp-server-api's models and answered 400 if they do not describe it.
    A new run is checked as the server would: a display name, an experiment that exists,
    either an existing pipeline version or an inline pipeline spec, and runtime parameters
    that the pipeline declares, the required ones all given (stricter than KFP, whose run
    would fail later, in its driver). With `token` set, a request without that bearer
    token is answered 401."""

    def __init__(self, package: Path, *, token: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _FakeKfpHandler)
        self.package = package
        self.spec = yaml.safe_load(package.read_text())
        self.token = token
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.refused: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def upload(self, name: str, *, versions: int = 1) -> tuple[str, list[str]]:
        """A pipeline named `name` with `versions` versions of the training pipeline."""
        pipeline_id = str(uuid.uuid4())
        self.pipelines[pipeline_id] = {"pipeline_id": pipeline_id, "display_name": name, "created_at": _now()}
        self.versions[pipeline_id] = [
            {
                "pipeline_id": pipeline_id,
                "pipeline_version_id": str(uuid.uuid4()),
                "display_name": f"{name}-v{number}",
                "created_at": f"2026-11-{number:02d}T00:00:00Z",
                "pipeline_spec": self.spec,
            }
            for number in range(1, versions + 1)
        ]
        return pipeline_id, [version["pipeline_version_id"] for version in self.versions[pipeline_id]]

    def create_run(self, run: kfp_server_api.V2beta1Run) -> dict:
        if not run.display_name:
            raise BadRequest("a run needs a display_name")
        if run.experiment_id not in self.experiments:
            raise BadRequest(f"no experiment {run.experiment_id!r}")
        reference = run.pipeline_version_reference
        if (reference is None) == (run.pipeline_spec is None):
            raise BadRequest("a run needs either pipeline_version_reference or pipeline_spec")
        if reference is not None:
            versions = {v["pipeline_version_id"]: v for v in self.versions.get(reference.pipeline_id, [])}
            if reference.pipeline_version_id not in versions:
                raise BadRequest(f"no version {reference.pipeline_version_id!r} of pipeline {reference.pipeline_id!r}")
            spec = versions[reference.pipeline_version_id]["pipeline_spec"]
        else:
            spec = run.pipeline_spec
            if "root" not in spec or "pipelineInfo" not in spec:
                raise BadRequest("pipeline_spec is not a compiled PipelineSpec")
        declared = spec["root"]["inputDefinitions"]["parameters"]
        given = (run.runtime_config.parameters if run.runtime_config else None) or {}
        missing = sorted(name for name, p in declared.items() if not p.get("isOptional") and name not in given)
        unknown = sorted(set(given) - set(declared))
        if missing or unknown:
            raise BadRequest(f"runtime_config.parameters: missing {missing}, not declared {unknown}")
        for name, value in given.items():
            if declared[name]["parameterType"] == "STRING" and not isinstance(value, str):
                raise BadRequest(f"parameter {name} is a STRING, got {value!r}")
        run_id = str(uuid.uuid4())
        self.runs[run_id] = {
            **kfp_server_api.ApiClient().sanitize_for_serialization(run),
            "run_id": run_id,
            "state": "PENDING",
            "created_at": _now(),
        }
        return self.runs[run_id]


class _FakeKfpHandler(http.server.BaseHTTPRequestHandler):
    server: FakeKfpApi

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._answer("POST")

    def _answer(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {key: values[-1] for key, values in urllib.parse.parse_qs(url.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path == "/packages/training.yaml":
            return self._send(200, self.server.package.read_bytes(), "application/yaml")
        if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return self._send(401, {"code": 16, "message": "Unauthenticated"})
        try:
            status, answer = self._route(method, url.path.split("/")[3:], query, body)
        except BadRequest as error:
            self.server.refused.append(str(error))
            status, answer = 400, {"code": 3, "message": str(error)}
        self._send(status, answer)

    def _route(self, method: str, path: list[str], query: dict[str, str], body: bytes) -> tuple[int, Any]:
        kfp = self.server
        match method, path:
            case "GET", ["healthz"]:
                return 200, {"multi_user": False, "pipeline_store": "database"}
            case "GET", ["pipelines"]:
                name = _display_name_filter(query.get("filter"))
                found = [p for p in kfp.pipelines.values() if name in (None, p["display_name"])]
                return 200, {"pipelines": found, "total_size": len(found)}
            case "GET", ["pipelines", pipeline_id, "versions"]:
                if query.get("sort_by", "") not in ("", "created_at desc", "created_at"):
                    raise BadRequest(f"the fake sorts versions only by created_at, not {query['sort_by']!r}")
                versions = sorted(kfp.versions.get(pipeline_id, []), key=lambda v: v["created_at"])
                if query.get("sort_by") == "created_at desc":
                    versions.reverse()
                size = int(query.get("page_size") or len(versions))
                return 200, {"pipeline_versions": versions[:size], "total_size": len(versions)}
            case "GET", ["experiments"]:
                name = _display_name_filter(query.get("filter"))
                found = [e for e in kfp.experiments.values() if name in (None, e["display_name"])]
                return 200, {"experiments": found, "total_size": len(found)}
            case "POST", ["experiments"]:
                experiment = _model(body, "V2beta1Experiment")
                if not experiment.display_name:
                    raise BadRequest("an experiment needs a display_name")
                experiment_id = str(uuid.uuid4())
                kfp.experiments[experiment_id] = {
                    "experiment_id": experiment_id,
                    "display_name": experiment.display_name,
                    "namespace": experiment.namespace or "",
                    "created_at": _now(),
                }
                return 200, kfp.experiments[experiment_id]
            case "GET", ["runs"]:
                name = _display_name_filter(query.get("filter"))
                found = [
                    run
                    for run in kfp.runs.values()
                    if name in (None, run["display_name"])
                    and query.get("experiment_id") in (None, run["experiment_id"])
                ]
                return 200, {"runs": found, "total_size": len(found)}
            case "POST", ["runs"]:
                return 200, kfp.create_run(_model(body, "V2beta1Run"))
            case "GET", ["runs", run_id] if run_id in kfp.runs:
                return 200, kfp.runs[run_id]
        return 404, {"code": 5, "message": f"the fake KFP API does not serve {method} {self.path}"}

    def _send(self, status: int, answer: Any, content_type: str = "application/json") -> None:
        body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """modelcycle's training pipeline, compiled."""
    return compile_pipeline(tmp_path_factory.mktemp("kfp") / "training.yaml")


def _serve(fake: FakeKfpApi) -> Iterator[FakeKfpApi]:
    thread = threading.Thread(target=fake.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()


@pytest.fixture
def kfp(package: Path) -> Iterator[FakeKfpApi]:
    yield from _serve(FakeKfpApi(package))


@pytest.fixture
def kfp_with_auth(package: Path) -> Iterator[FakeKfpApi]:
    yield from _serve(FakeKfpApi(package, token=TOKEN))


def _submit(runner: KfpRunner, *, pipeline: str = PIPELINE_NAME, run_name: str = "fraud-retrain-1", **parameters: str) -> str:
    return runner.submit(
        pipeline=pipeline, run_name=run_name, experiment="modelcycle-retraining", parameters=parameters or PARAMETERS
    )


def test_a_run_starts_the_newest_version_with_the_four_parameters(kfp: FakeKfpApi) -> None:
    pipeline_id, versions = kfp.upload(PIPELINE_NAME, versions=3)

    run_id = _submit(KfpRunner(kfp.url))

    assert kfp.refused == []
    run = kfp.runs[run_id]
    assert run["display_name"] == "fraud-retrain-1"
    assert run["pipeline_version_reference"] == {"pipeline_id": pipeline_id, "pipeline_version_id": versions[-1]}
    assert kfp.experiments[run["experiment_id"]]["display_name"] == "modelcycle-retraining"
    assert run["runtime_config"]["parameters"] == PARAMETERS


def test_a_second_submit_of_the_same_run_name_starts_no_second_run(kfp: FakeKfpApi) -> None:
    kfp.upload(PIPELINE_NAME)
    first = _submit(KfpRunner(kfp.url))

    assert _submit(KfpRunner(kfp.url)) == first  # a restarted operator asks again
    assert list(kfp.runs) == [first]
    assert len(kfp.experiments) == 1

    other = _submit(KfpRunner(kfp.url), run_name="fraud-retrain-2")
    assert other != first and len(kfp.runs) == 2


def test_a_package_url_runs_its_spec_without_uploading_it(kfp: FakeKfpApi) -> None:
    run_id = _submit(KfpRunner(kfp.url), pipeline=f"{kfp.url}/packages/training.yaml")

    run = kfp.runs[run_id]
    assert "pipeline_version_reference" not in run
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == PIPELINE_NAME
    assert run["runtime_config"]["parameters"] == PARAMETERS
    assert kfp.pipelines == {}


@pytest.mark.parametrize(
    ("kfp_state", "state"),
    [
        ("PENDING", "pending"),
        ("RUNNING", "running"),
        ("SUCCEEDED", "succeeded"),
        ("FAILED", "failed"),
        ("CANCELED", "failed"),
        ("CANCELING", "other"),
        ("PAUSED", "other"),
        ("RUNTIME_STATE_UNSPECIFIED", "other"),
    ],
)
def test_the_run_state_in_the_operators_words(kfp: FakeKfpApi, kfp_state: str, state: str) -> None:
    kfp.upload(PIPELINE_NAME)
    runner = KfpRunner(kfp.url)
    run_id = _submit(runner)
    kfp.runs[run_id]["state"] = kfp_state

    seen = runner.state(run_id)

    assert (seen.run_id, seen.state) == (run_id, state)
    assert seen.message.startswith(f"KFP run 'fraud-retrain-1' is {kfp_state.lower()}")
    # the v2beta1 API carries no output parameters: the operator reads the registry instead
    assert seen.model_version is None


def test_a_failed_run_says_which_task_failed_and_why(kfp: FakeKfpApi) -> None:
    kfp.upload(PIPELINE_NAME)
    runner = KfpRunner(kfp.url)
    run_id = _submit(runner)
    kfp.runs[run_id].update(
        state="FAILED",
        run_details={
            "task_details": [
                {"display_name": "ingest", "state": "SUCCEEDED"},
                {"display_name": "validate", "state": "FAILED", "error": {"message": "3 rows fail the schema"}},
            ]
        },
    )

    assert runner.state(run_id).message == "KFP run 'fraud-retrain-1' is failed: task 'validate' failed (3 rows fail the schema)"


def test_an_unknown_pipeline_name_is_named_with_the_ones_found(kfp: FakeKfpApi) -> None:
    kfp.upload("someone-elses-pipeline")

    with pytest.raises(KfpRunError) as raised:
        _submit(KfpRunner(kfp.url), pipeline="fraud-trainnig")

    message = str(raised.value)
    assert "no pipeline named 'fraud-trainnig'" in message
    assert kfp.url in message and "'someone-elses-pipeline'" in message
    assert kfp.runs == {}


def test_a_run_missing_a_parameter_is_refused_by_the_schema(kfp: FakeKfpApi) -> None:
    kfp.upload(PIPELINE_NAME)
    parameters = {name: value for name, value in PARAMETERS.items() if name != "store_uri"}

    with pytest.raises(KfpRunError, match=r"400 Bad Request: .*missing \['store_uri'\]"):
        _submit(KfpRunner(kfp.url), **parameters)
    assert kfp.runs == {}


def test_a_body_that_kfp_server_api_does_not_describe_is_refused(kfp: FakeKfpApi) -> None:
    """The check the runner's requests pass is a real one: a field the models lack, or a
    value of the wrong type, is a 400."""
    pipeline_id, versions = kfp.upload(PIPELINE_NAME)
    kfp.experiments["e"] = {"experiment_id": "e", "display_name": "by-hand"}
    good = {
        "display_name": "by-hand",
        "experiment_id": "e",
        "pipeline_version_reference": {"pipeline_id": pipeline_id, "pipeline_version_id": versions[0]},
        "runtime_config": {"parameters": PARAMETERS},
    }
    for bad in (
        {**good, "parameters": PARAMETERS},
        {**good, "runtime_config": {"parameters": PARAMETERS, "pipeline_rot": "s3://x"}},
        {**good, "pipeline_version_reference": {"pipeline_id": pipeline_id}},
        {**good, "display_name": 7},
    ):
        request = urllib.request.Request(f"{kfp.url}/apis/v2beta1/runs", data=json.dumps(bad).encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 400
    assert kfp.runs == {}


def test_a_token_is_sent_and_a_refused_one_is_named(kfp_with_auth: FakeKfpApi, tmp_path: Path) -> None:
    kfp_with_auth.upload(PIPELINE_NAME)
    # with a namespace, kfp.Client does not probe healthz (and retry it) while connecting
    with pytest.raises(KfpRunError, match=rf"KFP at {kfp_with_auth.url} refused the credentials \(401"):
        _submit(KfpRunner(kfp_with_auth.url, namespace="team-fraud", token="stale"))

    assert _submit(KfpRunner(kfp_with_auth.url, namespace="team-fraud", token=TOKEN)) in kfp_with_auth.runs
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    runner = KfpRunner(kfp_with_auth.url, namespace="team-fraud", token_file=str(token_file))
    assert runner.state(_submit(runner)).state == "pending"


def test_an_unreachable_host_is_named(kfp: FakeKfpApi) -> None:
    kfp.shutdown()
    kfp.server_close()

    with pytest.raises(KfpRunError, match=rf"KFP at {kfp.url} is unreachable"):
        _submit(KfpRunner(kfp.url))
