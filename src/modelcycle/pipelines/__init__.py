"""The training pipeline, composed of the phase components, for Kubeflow and for `kfp.local`.

    plan ─┐
    ingest ─ validate ─ train × N (ParallelFor, one pod per candidate) ─ evaluate ─ register

`compile_pipeline` writes the IR YAML that the Kubeflow Pipelines UI uploads.
`run_local` runs the very same pipeline here through `kfp.local`'s SubprocessRunner, the
embedded default: each task is a subprocess of the current interpreter, artifacts live
under the run folder, and so do the temporary folders kfp makes (TMPDIR is pointed there).
"""


import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl, local
from kfp.dsl import HTML

from modelcycle import components as c

PIPELINE_NAME = "modelcycle-training"
#: How many ParallelFor iterations kfp.local runs at once (its ParallelExecutor's cap).
LOCAL_PARALLEL_TASKS = 2


class TrainingOutputs(NamedTuple):
    model_version: str
    report: HTML


@dsl.pipeline(name=PIPELINE_NAME, description="Ingest, validate, train candidates, evaluate against the spec's gates, register.")
def training_pipeline(
    spec_yaml: str,
    store_uri: str,
    registry_uri: str,
    base_dir: str = "",
) -> TrainingOutputs:
    """`store_uri` and `registry_uri` are where data versions and models live: on a cluster,
    object-store URLs (``s3://bucket/modelcycle/data``), since tasks share nothing but KFP
    artifacts and parameters; credentials come from the pods' environment (``AWS_*``).
    `base_dir` resolves relative data paths in the spec; a URL source needs none."""
    ingested = c.ingest(spec_yaml=spec_yaml, base_dir=base_dir, store_uri=store_uri).set_display_name("ingest")
    validated = c.validate(
        spec_yaml=spec_yaml, base_dir=base_dir, store_uri=store_uri, data_version=ingested.outputs["Output"]
    ).set_display_name("validate")
    planned = c.plan(spec_yaml=spec_yaml).set_display_name("plan candidates")
    with dsl.ParallelFor(planned.output, name="candidates") as candidate:
        trained = c.train(spec_yaml=spec_yaml, data=ingested.outputs["data"], candidate=candidate)
        trained.after(validated).set_display_name("train candidate")
    evaluated = c.evaluate(
        spec_yaml=spec_yaml,
        data=ingested.outputs["data"],
        schema=validated.outputs["schema"],
        candidates=dsl.Collected(trained.outputs["model"]),
    ).set_display_name("evaluate and select")
    registered = c.register(
        spec_yaml=spec_yaml,
        registry_uri=registry_uri,
        data=ingested.outputs["data"],
        schema=validated.outputs["schema"],
        best_model=evaluated.outputs["best_model"],
        evaluation=evaluated.outputs["evaluation"],
        report=evaluated.outputs["report"],
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    ).set_display_name("register")
    return TrainingOutputs(model_version=registered.output, report=evaluated.outputs["report"])


def compile_pipeline(path: str | Path) -> Path:
    """Write the pipeline's IR YAML, the file the Kubeflow Pipelines UI uploads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, package_path=str(path))
    return path


@dataclass
class LocalRun:
    model_version: str
    report: Path
    run_dir: Path
    seconds: float


def _run_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """kfp.local's `run_docker_container` (kfp 2.17) without its two faults: it starts the
    container with auto_remove, so a task that exits quickly can be removed while its logs
    are read (podman then answers 500, not 404, and the run fails), and a container gone
    before its exit code is read counts as a success. Here the container is removed only
    after its exit code is in hand."""
    from kfp.local import docker_task_handler

    container = client.containers.run(image=docker_task_handler.add_latest_tag_if_not_present(image),
                                      command=command, detach=True, stdout=True, stderr=True, volumes=volumes,
                                      **run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


def _use_container_runner_without_races() -> None:
    from kfp.local import docker_task_handler

    docker_task_handler.run_docker_container = _run_container


def run_local(spec_path: str | Path, *, workdir: str | Path = ".modelcycle", registry_uri: str | None = None,
              store_uri: str | None = None, runner: object | None = None) -> LocalRun:
    """Run the training pipeline here with kfp.local; raise RuntimeError naming the failed task.

    The data store and the registry default to folders in `workdir`; either may be an
    fsspec URL. `runner` is a kfp.local runner (default: the SubprocessRunner with this
    interpreter); a `kfp.local.DockerRunner` runs each task in its own container of the
    modelcycle image, which then reaches the stores only through URLs it can resolve."""
    spec_path = Path(spec_path).resolve()
    workdir = Path(workdir).resolve()
    run_dir = workdir / "runs" / time.strftime("%Y%m%d-%H%M%S")
    tmp = run_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    # kfp.local leaves a folder per task in TMPDIR, and runs two ParallelFor tasks at once:
    # each candidate's search gets half the cores, and so do its OpenMP threads, or four
    # processes fight over two cores.
    share = str(max(1, (os.cpu_count() or 2) // LOCAL_PARALLEL_TASKS))
    overrides = {"TMPDIR": str(tmp), "MODELCYCLE_TRAIN_JOBS": share, "OMP_NUM_THREADS": share}
    previous = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    started = time.perf_counter()
    try:
        root = run_dir / "artifacts"
        root.mkdir()
        if runner is not None and not isinstance(runner, local.SubprocessRunner):
            root.chmod(0o1777)  # bind-mounted into containers that write as the image's own user
        if isinstance(runner, local.DockerRunner):
            _use_container_runner_without_races()
        local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            task = training_pipeline(
                spec_yaml=spec_path.read_text(),
                base_dir=str(spec_path.parent),
                store_uri=store_uri or str(workdir / "data"),
                registry_uri=registry_uri or str(workdir / "registry"),
            )
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.perf_counter() - started
    report = run_dir / "report.html"
    shutil.copyfile(task.outputs["report"].path, report)
    result = LocalRun(model_version=task.outputs["model_version"], report=report, run_dir=run_dir, seconds=seconds)
    (run_dir / "result.json").write_text(json.dumps({
        "model_version": result.model_version, "report": str(report), "seconds": seconds,
    }, indent=2))
    return result
