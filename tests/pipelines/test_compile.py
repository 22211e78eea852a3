"""The compiled IR YAML loads back with kfp and holds every phase, ready for the Kubeflow UI."""

import yaml
from kfp import components

from modelcycle.pipelines import PIPELINE_NAME, compile_pipeline

PHASES = {"ingest", "validate", "plan", "train", "evaluate", "register"}


def test_compiled_yaml_loads_back_with_every_component(tmp_path):
    path = compile_pipeline(tmp_path / "pipeline.yaml")
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == PIPELINE_NAME
    comps = set(loaded.pipeline_spec.components)
    assert {f"comp-{p}" for p in PHASES} <= comps
    doc = yaml.safe_load(path.read_text())
    # Train fans out over the candidates: the loop iterates over plan's output list.
    loop = doc["components"]["comp-for-loop-1"]["dag"]["tasks"]["train"]
    assert loop["componentRef"]["name"] == "comp-train"
    root_tasks = doc["root"]["dag"]["tasks"]
    assert root_tasks["for-loop-1"]["parameterIterator"]["items"]["inputParameter"]
    # The UI draws these: typed metric artifacts and the HTML report.
    evaluate_outputs = doc["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert evaluate_outputs["classification"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    assert evaluate_outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert evaluate_outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    # No pip install at run time: the components run on the modelcycle image.
    for executor in doc["deploymentSpec"]["executors"].values():
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command
        assert executor["container"]["image"].startswith("modelcycle/")
