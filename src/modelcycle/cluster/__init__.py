"""A real Kubernetes control plane on this machine, for tests and for trying the operator.

There is no container engine here, so kind and k3d cannot run. Instead `ControlPlane`
runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok as processes
on loopback; kwok simulates nodes, so Deployments become Available without a kubelet.
Only a real apiserver enforces CRD schemas and CEL rules, the status subresource,
server-side apply, watches and garbage collection, which is why the operator and the
chart are tested against this rather than a mock.

The binaries are built once by `make k8s-bins` (`binaries`). Tests get the control plane
from the `control_plane` fixture of `modelcycle.cluster.testing`; people get it from
`modelcycle cluster up` (`cli`). Both can use a real cluster instead, through a kubeconfig.
"""

from modelcycle.cluster.binaries import KUBERNETES_VERSION, MissingBinary
from modelcycle.cluster.clusters import Cluster, KubectlError
from modelcycle.cluster.controlplane import ControlPlane, ControlPlaneError, ControlPlaneSettings

__all__ = [
    "KUBERNETES_VERSION",
    "Cluster",
    "ControlPlane",
    "ControlPlaneError",
    "ControlPlaneSettings",
    "KubectlError",
    "MissingBinary",
]
