"""A version is loaded only when a trusted key signed it: whoever can write the store can
replace an artifact and its sha256 together, but cannot sign."""

import hashlib
import json
import stat
import subprocess
import sys

import pandas as pd
import pytest

from modelcycle import signing
from modelcycle.batch import predict_batch
from modelcycle.export import export_onnx
from modelcycle.registry import ArtifactIntegrityError, Registry, SignatureError, SigningKeyError

from .test_integrity import malicious_pickle


def _manifest(root, number=1):
    return root / "fraud" / "versions" / str(number) / "version.json"


def _replace_artifact_and_sha256(root, data: bytes, number=1) -> str:
    """What an attacker who can write the store does: new bytes, and the manifest's sha256 and size to match."""
    (root / "fraud" / "versions" / str(number) / "model.joblib").write_bytes(data)
    manifest = json.loads(_manifest(root, number).read_text())
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    _manifest(root, number).write_text(json.dumps(manifest))
    return manifest["sha256"]


def _key(path) -> signing.Keyring:
    signing.new_key(path)
    return signing.Keyring.from_environment({signing.KEY_ENV: str(path)})


def test_a_registered_version_is_signed_by_the_signing_key(root, registry, register, signing_key):
    version = register()
    expected = signing.key_id(signing.Keyring.from_environment().signer().public_key())
    recorded = json.loads(_manifest(root).read_text())["signature"]
    assert recorded["algorithm"] == "ed25519"
    assert recorded["key_id"] == expected == version.signature.key_id
    assert registry.get("fraud", 1).signature == version.signature


def test_an_artifact_replaced_with_its_sha256_is_refused_before_unpickling(tmp_path, root, registry, register):
    register()
    marker = tmp_path / "code-ran"
    forged = _replace_artifact_and_sha256(root, malicious_pickle(marker))
    assert registry.get("fraud", 1).sha256 == forged  # the sha256 check alone would pass

    with pytest.raises(SignatureError) as caught:
        registry.load("fraud", 1)
    assert not marker.exists()
    message = str(caught.value)
    assert "model fraud version 1" in message and "does not match" in message and "refusing to unpickle" in message
    assert isinstance(caught.value, ArtifactIntegrityError)  # what callers of the registry already handle


def test_batch_and_export_refuse_it_too(tmp_path, root, registry, register):
    register()
    marker = tmp_path / "code-ran"
    _replace_artifact_and_sha256(root, malicious_pickle(marker))
    source = tmp_path / "in.csv"
    source.write_text("amount\n1.0\n")
    with pytest.raises(SignatureError, match="model fraud version 1"):
        predict_batch(registry, "fraud", 1, source=str(source), output=str(tmp_path / "out.csv"))
    with pytest.raises(SignatureError, match="model fraud version 1"):
        export_onnx(registry, "fraud", 1, test=pd.DataFrame({"amount": [1.0]}), out_dir=tmp_path / "export")
    assert not marker.exists()
    assert not (tmp_path / "out.csv").exists()


def test_a_rejected_version_passed_off_as_registered_is_refused(root, registry, register):
    from .conftest import REJECTED

    register(**REJECTED)
    manifest = json.loads(_manifest(root).read_text())
    manifest.update(status="registered", gates=[])
    _manifest(root).write_text(json.dumps(manifest))
    with pytest.raises(SignatureError, match="does not match"):
        registry.load("fraud", 1)


def test_a_version_signed_by_a_key_not_trusted_here_is_refused(tmp_path, root, register):
    version = register()
    other = _key(tmp_path / "other-key")
    with pytest.raises(SignatureError) as caught:
        Registry(root, keyring=other).load("fraud", 1)
    message = str(caught.value)
    assert f"signed by key {version.signature.key_id}" in message
    assert f"expected one of {signing.key_id(other.signer().public_key())}" in message
    assert signing.TRUSTED_ENV in message


def test_a_signature_made_with_another_key_under_the_trusted_id_is_refused(tmp_path, root, registry, register):
    register()
    forger = _key(tmp_path / "forger")
    manifest = json.loads(_manifest(root).read_text())
    forged = forger.sign(registry.get("fraud", 1).statement())
    manifest["signature"] = {**forged.model_dump(), "key_id": manifest["signature"]["key_id"]}
    _manifest(root).write_text(json.dumps(manifest))
    with pytest.raises(SignatureError, match="does not match"):
        registry.load("fraud", 1)


def test_an_unsigned_version_is_refused_until_it_is_signed(root, registry, register):
    register(model={"weights": [1, 2]})
    manifest = json.loads(_manifest(root).read_text())
    del manifest["signature"]  # as a version registered before signing existed
    _manifest(root).write_text(json.dumps(manifest))

    with pytest.raises(SignatureError) as caught:
        registry.load("fraud", 1)
    assert "unsigned" in str(caught.value) and "modelcycle models sign NAME@VERSION" in str(caught.value)

    signed = registry.sign("fraud", 1)
    assert signed.signature is not None
    assert registry.load("fraud", 1) == {"weights": [1, 2]}


def test_signing_an_unsigned_version_checks_its_bytes_first(root, registry, register):
    register()
    manifest = json.loads(_manifest(root).read_text())
    del manifest["signature"]
    _manifest(root).write_text(json.dumps(manifest))
    (root / "fraud" / "versions" / "1" / "model.joblib").write_bytes(b"changed")
    with pytest.raises(ArtifactIntegrityError, match="sha256 mismatch"):
        registry.sign("fraud", 1)
    assert "signature" not in json.loads(_manifest(root).read_text())


def test_key_rotation_old_versions_verify_new_ones_use_the_new_key_and_re_signing_retires_the_old(tmp_path, root):
    old = _key(tmp_path / "old")
    Registry(root, keyring=old).register("fraud", {"v": 1}, lineage={}, params={}, metrics={})
    old_id = signing.key_id(old.signer().public_key())

    new = _key(tmp_path / "new")
    new_id = new.trust(new.signer().public_key())
    new.trust(old.signer().public_key())  # the old public key stays in the keyring
    rotated = Registry(root, keyring=new)
    assert rotated.load("fraud", 1) == {"v": 1}
    assert rotated.register("fraud", {"v": 2}, lineage={}, params={}, metrics={}).signature.key_id == new_id

    only_new = signing.Keyring.from_environment({signing.KEY_ENV: str(tmp_path / "new")})
    with pytest.raises(SignatureError, match=f"signed by key {old_id}"):
        Registry(root, keyring=only_new).load("fraud", 1)

    assert rotated.sign("fraud", 1).signature.key_id == new_id
    assert Registry(root, keyring=only_new).load("fraud", 1) == {"v": 1}
    assert Registry(root, keyring=only_new).load("fraud", 2) == {"v": 2}


def test_re_signing_refuses_a_version_whose_signature_does_not_verify(tmp_path, root, register):
    register()
    stranger = Registry(root, keyring=_key(tmp_path / "stranger"))
    with pytest.raises(SignatureError, match="not trusted here"):
        stranger.sign("fraud", 1)


def test_the_default_key_is_created_on_first_signing_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.delenv(signing.KEY_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    keyring = signing.Keyring.from_environment()
    assert not (tmp_path / "home" / ".config" / "modelcycle" / "signing-key").exists()  # verifying creates nothing

    version = Registry(tmp_path / "registry").register("fraud", {"w": 1}, lineage={}, params={}, metrics={})
    path = tmp_path / "home" / ".config" / "modelcycle" / "signing-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert version.signature.key_id == signing.key_id(signing.Keyring.from_environment().signer().public_key())
    assert keyring.signing_key is None


def test_a_signing_key_path_that_does_not_exist_is_an_error_not_a_new_key(tmp_path, monkeypatch):
    missing = tmp_path / "secret" / "signing-key"
    monkeypatch.setenv(signing.KEY_ENV, str(missing))
    with pytest.raises(SigningKeyError, match=f"{signing.KEY_ENV}={missing}: no such file"):
        Registry(tmp_path / "registry").register("fraud", {"w": 1}, lineage={}, params={}, metrics={})
    assert not missing.exists()
    assert not (tmp_path / "registry" / "fraud").exists()  # no version number was taken


def test_keys_given_as_pem_text_in_the_environment(tmp_path, root, registry, register, monkeypatch, signing_key):
    register(model={"w": 3})
    public = signing.public_pem(signing.Keyring.from_environment().signer().public_key())
    monkeypatch.delenv(signing.KEY_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    with pytest.raises(SignatureError, match="expected one of none"):
        Registry(root).load("fraud", 1)

    monkeypatch.setenv(signing.TRUSTED_ENV, public)  # a server holds only the public key
    assert Registry(root).load("fraud", 1) == {"w": 3}

    monkeypatch.setenv(signing.KEY_ENV, signing_key.read_text())  # a Secret given as an environment variable
    assert Registry(root).register("fraud", {"w": 5}, lineage={}, params={}, metrics={}).signature is not None


def test_a_keyring_folder_of_public_keys(tmp_path, root, register, monkeypatch, signing_key):
    register(model={"w": 3})
    keys = tmp_path / "keyring"
    keys.mkdir()
    (keys / "current.pem").write_text(signing.public_pem(signing.Keyring.from_environment().signer().public_key()))
    (keys / "unrelated.pem").write_text(signing.public_pem(_key(tmp_path / "x").signer().public_key()))
    monkeypatch.delenv(signing.KEY_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv(signing.TRUSTED_ENV, str(keys))
    assert Registry(root).load("fraud", 1) == {"w": 3}


def test_the_sign_command_signs_a_legacy_version(root, register):
    register(model={"w": 7})
    manifest = json.loads(_manifest(root).read_text())
    del manifest["signature"]
    _manifest(root).write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-m", "modelcycle.cli", "models", "sign", "fraud@1", "--registry", str(root)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("signed fraud@1 with key ")
    assert Registry(root).load("fraud", 1) == {"w": 7}

    again = subprocess.run([sys.executable, "-m", "modelcycle.cli", "models", "sign", "fraud@2", "--registry", str(root)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "has no version 2" in again.stdout + again.stderr


def test_the_key_commands(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "new"
    made = subprocess.run([sys.executable, "-m", "modelcycle.signing", "new-key", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kid = signing.key_id(signing.Keyring.from_environment({signing.KEY_ENV: str(path)}).signer().public_key())
    assert made.stdout == f"key {kid} written to {path}\n"
    refused = subprocess.run([sys.executable, "-m", "modelcycle.signing", "new-key", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "never overwritten" in refused.stderr

    monkeypatch.setenv(signing.KEY_ENV, str(path))
    shown = subprocess.run([sys.executable, "-m", "modelcycle.signing", "public-key"], capture_output=True, text=True,
                           timeout=60)
    assert shown.stdout.startswith(f"# key id {kid}\n-----BEGIN PUBLIC KEY-----")
    keys = signing.Keyring.from_environment({signing.TRUSTED_ENV: shown.stdout, "HOME": str(tmp_path)})
    assert kid in keys.trusted
