"""A component that fails to start makes `start()` fail fast, with the component's own
words, and leaves nothing running."""

from pathlib import Path

import pytest

from modelcycle.cluster import ControlPlane, ControlPlaneError

pytestmark = pytest.mark.cluster


def test_failing_component_is_reported_with_its_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "etcd").write_text("a file where etcd wants its data folder")
    plane = ControlPlane(run_dir=run_dir)

    with pytest.raises(ControlPlaneError) as failed:
        plane.start()

    message = str(failed.value)
    assert message.startswith("etcd exited with code 1 while the control plane was starting")
    assert str(run_dir / "logs" / "etcd.log") in message
    assert str(run_dir / "etcd") in message.split("last lines of", 1)[1]
    assert [record.is_running() for record in plane.records] == [False]
