"""An artifact is unpickled only when its bytes match the sha256 in its manifest."""

import hashlib
import io
import pathlib

import joblib
import pytest

from modelcycle import artifacts
from modelcycle.registry import ArtifactIntegrityError


class Trap:
    """Unpickling this creates a file: it stands for a pickle that runs an attacker's code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def malicious_pickle(marker: pathlib.Path) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(Trap(marker), buffer)
    return buffer.getvalue()


def test_a_replaced_artifact_is_refused_and_never_unpickled(tmp_path, root, registry, register):
    armed = tmp_path / "proof-the-trap-works"
    joblib.load(io.BytesIO(malicious_pickle(armed)))
    assert armed.exists()  # unpickling the trap does run code

    version = register()
    marker = tmp_path / "code-ran"
    artifact = root / "fraud" / "versions" / "1" / "model.joblib"
    artifact.write_bytes(malicious_pickle(marker))

    with pytest.raises(ArtifactIntegrityError) as caught:
        registry.load("fraud", 1)
    assert not marker.exists()
    message = str(caught.value)
    assert str(artifact) in message
    assert version.sha256 in message
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() in message


def test_one_flipped_byte_is_refused(root, registry, register):
    register()
    artifact = root / "fraud" / "versions" / "1" / "model.joblib"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="sha256 mismatch"):
        registry.load("fraud")


def test_a_missing_artifact_is_refused(root, registry, register):
    register()
    (root / "fraud" / "versions" / "1" / "model.joblib").unlink()
    with pytest.raises(ArtifactIntegrityError, match="model.joblib: the artifact is missing"):
        registry.load("fraud")


def test_the_error_is_also_the_artifacts_modules_error(root, registry, register):
    register()
    (root / "fraud" / "versions" / "1" / "model.joblib").write_bytes(b"not a pickle")
    with pytest.raises(artifacts.ArtifactIntegrityError):
        registry.load("fraud")


def test_an_untouched_artifact_loads(registry, register):
    register(model={"weights": [1, 2, 3]})
    assert registry.load("fraud") == {"weights": [1, 2, 3]}
