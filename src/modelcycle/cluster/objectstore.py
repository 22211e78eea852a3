"""A local S3-compatible object store: SeaweedFS, the one Kubeflow Pipelines itself ships.

`ObjectStore.start(folder)` runs ``weed server`` (master, volume, filer and the S3 gateway
in one process) bound to 127.0.0.1 on free ports, with its data, its log and a generated
access key under `folder`, and waits until the S3 API answers. `tools/k8s/build.sh` builds
``weed`` from the module pinned in ``tools/k8s/seaweedfs/go.mod``.

It is what the data store and the registry meet in the tests instead of a mock: the same
``s3://bucket/...`` URLs, credentials and endpoint variables a cluster would use
(`ObjectStore.env`), read by s3fs/botocore from the standard ``AWS_*`` variables.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelcycle.cluster import binaries
from modelcycle.cluster.processes import ProcessRecord, free_ports, spawn, stop

START_TIMEOUT_S = 60.0
"""Master, volume, filer and S3 start one after the other; 5-10 s is usual here."""


READINESS_BUCKET = "modelcycle-readiness"


class ObjectStoreError(RuntimeError):
    """The object store did not start; the message carries its log's tail."""


@dataclass
class ObjectStore:
    """A running SeaweedFS with its S3 gateway on `endpoint`."""

    folder: Path
    endpoint: str
    access_key: str
    secret_key: str
    records: list[ProcessRecord] = field(default_factory=list)
    _owned: dict = field(default_factory=dict, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The variables that point s3fs, boto and the AWS CLI at this store."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def storage_options(self) -> dict:
        """fsspec/s3fs options for this store, for code that does not read the environment."""
        return {"key": self.access_key, "secret": self.secret_key, "endpoint_url": self.endpoint}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options())

    def make_bucket(self, name: str) -> str:
        fs = self.filesystem()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    @classmethod
    def start(cls, folder: Path, *, tie_to_parent: bool = True) -> ObjectStore:
        weed = binaries.find("weed")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(exist_ok=True)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        store = cls(folder=folder, endpoint=f"http://127.0.0.1:{s3}",
                    access_key="modelcycle", secret_key=secrets.token_hex(16))
        argv = [
            str(weed), "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=0",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={folder / 'filer.sock'}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": store.access_key, "AWS_SECRET_ACCESS_KEY": store.secret_key}
        log = folder / "weed.log"
        process, record = spawn("weed", argv, log=log, cwd=folder, env=env, tie_to_parent=tie_to_parent)
        store.records.append(record)
        store._owned[process.pid] = process
        try:
            store._wait_ready(process, log)
        except BaseException:
            store.stop()
            raise
        return store

    def _wait_ready(self, process: subprocess.Popen, log: Path) -> None:
        """Until a bucket can be created and listed: the S3 port opens before the filer answers."""
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ObjectStoreError(f"weed exited with {process.returncode}; last lines of {log}:\n{_tail(log)}")
            try:
                fs = self.filesystem()
                fs.invalidate_cache()
                if not fs.exists(READINESS_BUCKET):
                    fs.mkdir(READINESS_BUCKET)
                fs.rm(READINESS_BUCKET, recursive=True)
                return
            except Exception as exc:  # noqa: BLE001 - whatever fails, it is not ready yet
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.3)
        raise ObjectStoreError(f"SeaweedFS's S3 API at {self.endpoint} not ready after {START_TIMEOUT_S:.0f} s "
                               f"({last}); last lines of {log}:\n{_tail(log)}")

    def stop(self) -> None:
        stop(self.records, timeout=10, owned=self._owned)
        self.records.clear()

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
