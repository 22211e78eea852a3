"""The images of this checkout: non-root, labelled, each with only its own extras, and
runnable under the operator's security context (read-only root, no capabilities)."""

import json
import uuid

from modelcycle import __version__
from modelcycle.cluster.images import OPERATOR_IMAGE, PYTHON_IMAGE

LOCKED_DIST = "import importlib.metadata as m, json; print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))"


def _run(engine, image, *args, entrypoint=None):
    extra = ["--entrypoint", entrypoint] if entrypoint else []
    return engine.run("run", "--rm", "--read-only", "--tmpfs", "/tmp", "--cap-drop=all", "--network=none",
                      *extra, image, *args, timeout=120)


def test_images_are_labelled_and_not_root(container_engine):
    for image in (PYTHON_IMAGE, OPERATOR_IMAGE):
        config = container_engine.inspect(image)
        labels = config.get("Labels") or config["Config"]["Labels"]
        assert labels["org.opencontainers.image.version"] == __version__
        assert labels["org.opencontainers.image.source"].startswith("https://")
        assert len(labels["org.opencontainers.image.revision"]) in (40, len("unknown"))
        assert config["Config"]["User"] == "10001", image


def test_modelcycle_image_runs_the_cli_read_only(container_engine):
    out = _run(container_engine, PYTHON_IMAGE, "modelcycle", "version").stdout
    assert out.strip() == __version__
    uid = _run(container_engine, PYTHON_IMAGE, "python", "-c", "import os; print(os.getuid())").stdout
    assert uid.strip() == "10001"


def test_each_image_has_only_its_extras(container_engine):
    python_dists = set(json.loads(_run(container_engine, PYTHON_IMAGE, "python", "-c", LOCKED_DIST).stdout))
    operator_dists = set(json.loads(_run(container_engine, OPERATOR_IMAGE, "-c", LOCKED_DIST,
                                         entrypoint="python").stdout))
    assert {"kfp", "bentoml", "s3fs", "modelcycle"} <= python_dists
    assert "kopf" not in python_dists
    # kfp (and the kubernetes client it requires): retraining runs on Kubeflow Pipelines.
    assert {"kopf", "aiohttp", "cronsim", "kfp", "modelcycle"} <= operator_dists
    assert not {"bentoml", "pandas", "numpy", "scikit-learn", "joblib", "pytest"} & operator_dists


def test_operator_image_starts_its_module(container_engine):
    proc = _run(container_engine, OPERATOR_IMAGE, "-c", "import modelcycle.operator.handlers, kopf; print('ok')",
                entrypoint="python")
    assert proc.stdout.strip() == "ok"


def test_an_image_saved_as_an_oci_archive_loads_back(container_engine, tmp_path):
    """What an air-gapped cluster gets: `make images IMAGES_ARGS="--save DIR"` writes these."""
    archive = container_engine.save(OPERATOR_IMAGE, tmp_path / "operator.oci.tar")
    assert archive.stat().st_size > 10_000_000
    if container_engine.name == "podman":
        loaded = container_engine.run("load", "-q", "-i", str(archive)).stdout
        assert "modelcycle-operator" in loaded or "sha256:" in loaded
        labels = container_engine.inspect(OPERATOR_IMAGE)["Labels"]
        assert labels["org.opencontainers.image.version"] == __version__


def test_a_rebuilt_tag_frees_the_image_it_replaced_unless_another_tag_holds_it(container_engine, tmp_path):
    """`make images` after a change rebuilds the same tags: the images they named before go,
    or every rebuild would leave a gigabyte behind."""
    tag, keeper = f"localhost/modelcycle-test-rebuild:{uuid.uuid4().hex[:12]}", ""
    (tmp_path / "Dockerfile").write_text(f"FROM {PYTHON_IMAGE}\n")
    try:
        container_engine.build(context=tmp_path, dockerfile=tmp_path / "Dockerfile", tag=tag, labels={"build": "1"})
        first = container_engine.image_id(tag)
        container_engine.build(context=tmp_path, dockerfile=tmp_path / "Dockerfile", tag=tag, labels={"build": "2"})
        second = container_engine.image_id(tag)
        assert first and second and second != first
        assert not container_engine.exists(first)  # the replaced image is gone

        keeper = tag + "-kept"
        container_engine.run("tag", second, keeper)  # another tag holds the current image
        container_engine.build(context=tmp_path, dockerfile=tmp_path / "Dockerfile", tag=tag, labels={"build": "3"})
        assert container_engine.image_id(keeper) == second  # not removed: still named by `keeper`
    finally:
        for name in (tag, keeper):
            if name:
                container_engine.remove(name)
