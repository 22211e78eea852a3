"""Signatures: a model version is unpickled only when a key kept outside the store vouches for it.

The sha256 next to an artifact catches corruption, not tampering: whoever can write the
store can replace the artifact and its sha256 together. So the registry also signs every
version it registers: an Ed25519 signature over a short statement (the model's name, the
version number, the artifact's sha256 and the version's status, `statement`), made with a
private key that never enters the store, and recorded in the manifest with the key's id.
Whatever unpickles a version (the registry's `load`, and through it batch prediction and
the ONNX export; the bento; the model server) checks the bytes against the sha256 and the
sha256 against the signature, with public keys that also come from outside the store, and
refuses with `SignatureError` before anything is unpickled. Ed25519 rather than an HMAC so
that servers hold only public keys: a model server that is broken into cannot sign.

Keys, from the environment (`Keyring.from_environment`):

- ``MODELCYCLE_SIGNING_KEY``: the private key that signs, a PEM file (PKCS#8, what
  ``openssl genpkey -algorithm ed25519`` writes), or the PEM text itself (a Kubernetes
  Secret's key given as an environment variable, or a container started with ``-e``).
  Unset, it is ``~/.config/modelcycle/signing-key``, created on first signing with mode
  0600; a path that is set must exist, so that a Secret that failed to mount is an error
  rather than a fresh key nobody trusts.
- ``MODELCYCLE_TRUSTED_KEYS``: the public keys that verify, the keyring: a PEM file of one
  or more public keys, a folder of ``*.pem`` files, or PEM text. The signing key's own
  public key is trusted too whenever the signing key is there, so one machine that signs
  and serves needs nothing set; a server in a cluster gets only this variable.

A key's id is the first 16 hex digits of the sha256 of its raw 32-byte public key
(`key_id`); ``python -m modelcycle.signing public-key`` prints the signing key's id and
public PEM, ready for a keyring.

Rotation: make a new key, put the old key's public PEM in the keyring, and sign with the
new one. Versions signed by the old key still verify by their key id; `Registry.sign`
(``modelcycle models sign NAME@VERSION``) re-signs a version with the new key once its
current signature verifies, after which the old public key can leave the keyring.

Versions registered before signing existed have no signature and are refused, like a
version whose signature was stripped: the two cannot be told apart, so any switch that let
unsigned versions load would let every tampered one load too. `Registry.sign` signs such a
version on purpose, once, after checking its bytes against its recorded sha256: whoever
runs it vouches that the store was not tampered with until then.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ValidationError

from modelcycle import artifacts

KEY_ENV = "MODELCYCLE_SIGNING_KEY"
TRUSTED_ENV = "MODELCYCLE_TRUSTED_KEYS"
DEFAULT_KEY_PATH = Path("~/.config/modelcycle/signing-key")
"""Where the signing key is when `KEY_ENV` is unset: the user's configuration, outside any
workdir, so that a store (or a workdir) copied elsewhere does not carry its key along."""
_PEM = "-----BEGIN "
"""A variable that holds this is PEM text, not a path."""


class SignatureError(artifacts.ArtifactIntegrityError):
    """A version's signature is missing, made by a key that is not trusted, or does not match;
    nothing was unpickled."""


class SigningKeyError(RuntimeError):
    """The signing key or the trusted keys cannot be read; the message says where they were looked for."""


class Signature(BaseModel):
    """A signature as a manifest records it."""

    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str
    """The id of the key that signed (`key_id`): which public key of the keyring verifies it."""
    value: str
    """The Ed25519 signature of `statement`, base64."""


def statement(*, name: str, version: int, sha256: str, status: str) -> bytes:
    """The bytes a version's signature is over. The status is in it so that a rejected version
    cannot be passed off as registered, the number so that one signed artifact cannot stand in
    for another version."""
    fields = {"name": name, "version": int(version), "sha256": sha256, "status": status}
    return b"modelcycle model version v1\n" + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def new_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """Create a signing key at `path` (mode 0600), or read the one another process created first."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails if the key exists: two first uses never make two keys
    except FileExistsError:
        return _private_key(path.read_bytes(), where=str(path))
    finally:
        Path(tmp).unlink(missing_ok=True)
    return key


@dataclass
class Keyring:
    """The key that signs (when this process signs) and the public keys that verify."""

    signing_key: Ed25519PrivateKey | None = None
    trusted: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    """Key id -> public key."""
    key_path: Path | None = None
    """Where the signing key is created on first signing, when `signing_key` is None."""
    sources: list[str] = field(default_factory=list)
    """Where the keys came from, for error messages."""

    def __post_init__(self) -> None:
        if self.signing_key is not None:
            self.trust(self.signing_key.public_key())

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Keyring:
        """The keyring `KEY_ENV` and `TRUSTED_ENV` describe (see the module's docstring)."""
        environ = os.environ if environ is None else environ
        keyring = cls()
        if trusted := environ.get(TRUSTED_ENV):
            for key in _public_keys(trusted):
                keyring.trust(key)
            keyring.sources.append(f"{TRUSTED_ENV}" + ("" if _PEM in trusted else f"={trusted}"))
        given = environ.get(KEY_ENV)
        if given and _PEM in given:
            keyring.signing_key = _private_key(given.encode(), where=f"${KEY_ENV}")
            keyring.sources.append(f"the signing key in ${KEY_ENV}")
        else:
            path = Path(given).expanduser() if given else DEFAULT_KEY_PATH.expanduser()
            if path.is_file():
                keyring.signing_key = _private_key(path.read_bytes(), where=str(path))
                keyring.sources.append(f"the signing key {path}")
            elif given:
                raise SigningKeyError(f"{KEY_ENV}={given}: no such file; point it at an Ed25519 private key "
                                      f"(PEM) or create one with `python -m modelcycle.signing new-key {given}`")
            else:
                keyring.key_path = path
        if keyring.signing_key is not None:
            keyring.trust(keyring.signing_key.public_key())
        return keyring

    def trust(self, public_key: Ed25519PublicKey) -> str:
        kid = key_id(public_key)
        self.trusted[kid] = public_key
        return kid

    def signer(self) -> Ed25519PrivateKey:
        """The signing key, created at the default path on first use."""
        if self.signing_key is None:
            if self.key_path is None:
                raise SigningKeyError(f"no signing key: set {KEY_ENV} to an Ed25519 private key (a PEM file)")
            self.signing_key = new_key(self.key_path)
            self.trust(self.signing_key.public_key())
            self.sources.append(f"the signing key {self.key_path}")
        return self.signing_key

    def sign(self, message: bytes) -> Signature:
        key = self.signer()
        return Signature(key_id=key_id(key.public_key()), value=base64.b64encode(key.sign(message)).decode())

    def verify(self, message: bytes, signature: Signature | dict | None, *, what: str) -> None:
        """Raise `SignatureError` unless `signature` is a trusted key's signature of `message`.
        `what` names the version in the error, which also says what to do."""
        trusted = ", ".join(sorted(self.trusted)) or "none"
        where = "; ".join(self.sources) or f"nothing: neither {KEY_ENV} nor {TRUSTED_ENV} is set"
        if signature is None:
            raise SignatureError(
                f"{what}: unsigned, expected a signature by a trusted key ({trusted}), found none; refusing to "
                "unpickle it. A version registered before signing existed is signed, once its bytes are known "
                "good, with `modelcycle models sign NAME@VERSION --registry URI`")
        try:
            signature = Signature.model_validate(signature)
        except ValidationError as exc:
            raise SignatureError(f"{what}: expected a signature {{algorithm, key_id, value}}, found a malformed "
                                 f"one ({exc.error_count()} errors); refusing to unpickle it") from None
        key = self.trusted.get(signature.key_id)
        if key is None:
            raise SignatureError(
                f"{what}: signed by key {signature.key_id}, which is not trusted here: expected one of {trusted} "
                f"(from {where}); refusing to unpickle it. Add that key's public PEM to {TRUSTED_ENV} if you "
                "trust it, or re-sign the version with a trusted key")
        try:
            key.verify(base64.b64decode(signature.value, validate=True), message)
        except (InvalidSignature, ValueError):
            raise SignatureError(
                f"{what}: the signature by key {signature.key_id} does not match the version's name, number, "
                "sha256 and status: the manifest or the artifact was changed after it was signed; refusing to "
                "unpickle it. Register the model again") from None


def _private_key(data: bytes, *, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{where}: expected an unencrypted Ed25519 private key in PEM, "
                              f"could not read it: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{where}: expected an Ed25519 private key, found {type(key).__name__}")
    return key


def _public_keys(given: str) -> list[Ed25519PublicKey]:
    """The public keys of `TRUSTED_ENV`: PEM text, a PEM file, or a folder of ``*.pem`` files."""
    if _PEM in given:
        texts = [(f"${TRUSTED_ENV}", given)]
    else:
        path = Path(given).expanduser()
        if path.is_dir():
            texts = [(str(p), p.read_text()) for p in sorted(path.glob("*.pem"))]
        elif path.is_file():
            texts = [(str(path), path.read_text())]
        else:
            raise SigningKeyError(f"{TRUSTED_ENV}={given}: no such file or folder; point it at public keys (PEM)")
    keys = []
    for where, text in texts:
        blocks = [f"{_PEM}{block}" for block in text.split(_PEM)[1:]]
        for block in blocks:
            try:
                key = serialization.load_pem_public_key(block.encode())
            except ValueError as exc:
                raise SigningKeyError(f"{where}: expected Ed25519 public keys in PEM, could not read one: {exc}"
                                      ) from None
            if not isinstance(key, Ed25519PublicKey):
                raise SigningKeyError(f"{where}: expected Ed25519 public keys, found {type(key).__name__}")
            keys.append(key)
    if not keys:
        raise SigningKeyError(f"{TRUSTED_ENV}={given}: no public key (PEM) found there")
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelcycle.signing", description="Model signing keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("new-key", help="create an Ed25519 signing key (mode 0600)")
    made.add_argument("path", type=Path)
    commands.add_parser("public-key", help=f"print the signing key's id and public PEM, for {TRUSTED_ENV}")
    args = parser.parse_args(argv)
    try:
        if args.command == "new-key":
            if args.path.expanduser().exists():
                raise SigningKeyError(f"{args.path} exists; a key is never overwritten")
            key = new_key(args.path)
            print(f"key {key_id(key.public_key())} written to {args.path}")
        else:
            key = Keyring.from_environment().signer()
            print(f"# key id {key_id(key.public_key())}")
            print(public_pem(key.public_key()), end="")
    except SigningKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
