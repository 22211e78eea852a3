"""A model artifact is never unpickled before its sha256 is checked."""

import pytest

from modelcycle import artifacts


class _Tripwire:
    """Unpickling this writes a marker file: proof that code ran at load time."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip(tmp_path):
    sha, size = artifacts.save({"a": [1, 2, 3]}, tmp_path / "m.joblib")
    assert size == (tmp_path / "m.joblib").stat().st_size
    assert artifacts.load(tmp_path / "m.joblib", sha256=sha) == {"a": [1, 2, 3]}


def test_tampered_artifact_is_refused_before_unpickling(tmp_path):
    sha, _ = artifacts.save({"weights": 1}, tmp_path / "m.joblib")
    marker = tmp_path / "code-ran"
    artifacts.save(_Tripwire(str(marker)), tmp_path / "m.joblib")  # swapped for a malicious pickle
    with pytest.raises(artifacts.ArtifactIntegrityError, match="sha256 mismatch"):
        artifacts.load(tmp_path / "m.joblib", sha256=sha)
    assert not marker.exists()
