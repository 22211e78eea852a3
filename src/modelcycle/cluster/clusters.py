"""A Kubernetes cluster as seen from its clients: a kubeconfig, and kubectl run against it.

The same `Cluster` stands for the local control plane (`ControlPlane.cluster`) and for a
real cluster reached through an existing kubeconfig (`Cluster.from_kubeconfig`), so a
test or a command does not care which one it got.

kubectl is run with `KUBECONFIG` pointing at the cluster's kubeconfig and, for the local
control plane, `KUBECACHEDIR` inside the run folder, so that nothing is written under
`~/.kube`.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from modelcycle.cluster import binaries


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries the command and what kubectl said."""

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.command = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        said = stderr.strip() or stdout.strip() or "(no output)"
        super().__init__(f"`kubectl {' '.join(args)}` exited with {returncode}: {said}")


@dataclass(frozen=True)
class Cluster:
    """How to reach one cluster."""

    kubeconfig: Path
    kubectl_cache_dir: Path | None = None
    """`KUBECACHEDIR` for kubectl; None keeps kubectl's default (`~/.kube/cache`)."""

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path | None = None) -> Cluster:
        """An existing cluster: `kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config`."""
        if kubeconfig is None:
            first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
            kubeconfig = Path(first) if first else Path.home() / ".kube" / "config"
        kubeconfig = kubeconfig.expanduser().absolute()
        if not kubeconfig.is_file():
            raise FileNotFoundError(f"kubeconfig {kubeconfig} does not exist")
        return cls(kubeconfig=kubeconfig)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point kubectl (and helm) at this cluster."""
        env = {"KUBECONFIG": str(self.kubeconfig)}
        if self.kubectl_cache_dir is not None:
            env["KUBECACHEDIR"] = str(self.kubectl_cache_dir)
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise `KubectlError` on failure if `check`."""
        argv = [str(binaries.find("kubectl")), *args]
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )
        if check and result.returncode != 0:
            raise KubectlError(list(args), result.returncode, result.stdout, result.stderr)
        return result
