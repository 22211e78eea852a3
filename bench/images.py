"""Image sizes and build times: each image of `make images` next to the peer it replaces.

The peer is the single image every part used before the dependencies were split into
extras: the same Dockerfile with every extra (`EXTRAS=--all-extras`), which is what the
modelcycle and the operator image both were. Printed: size and build time of each, cold
(`--no-cache`: no layer reused; the package downloads stay in the build's uv cache mount,
so a machine's very first build also pays the downloads) and warm (nothing changed: the
layer cache answers), and the cost of the local Debian base where no registry is reachable.
Run it from a checkout nobody edits meanwhile: a changed pyproject or src invalidates layers.

    .venv/bin/python bench/images.py            # ~9 min on 2 cores: three cold builds
"""

import json
import time

from modelcycle.cluster.containers import cache_dir, engine
from modelcycle.cluster.images import IMAGES, base_image, oci_labels, project_root


def build(eng, *, dockerfile, tag, base, extra_args=None, cold=False):
    root = project_root()
    args = ["build", "-t", tag, "-f", str(root / dockerfile), "--build-arg", f"BASE_IMAGE={base}"]
    for key, value in (extra_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    for key, value in oci_labels(title=tag, root=root).items():
        args += ["--label", f"{key}={value}"]
    if cold:
        args.append("--no-cache")
    args += ["-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro", str(root)]
    started = time.perf_counter()
    eng.run(*args, timeout=3600)
    return time.perf_counter() - started, eng.size_bytes(tag) / 1e6


def main() -> None:
    eng = engine(install_missing=True)
    started = time.perf_counter()
    base = base_image(eng)
    base_seconds = time.perf_counter() - started
    rows = []
    jobs = [(image.dockerfile, image.tag, None) for image in IMAGES]
    jobs.append(("Dockerfile", "modelcycle/bench-all-extras:latest", {"EXTRAS": "--all-extras"}))
    for dockerfile, tag, extra in jobs:
        cold, size = build(eng, dockerfile=dockerfile, tag=tag, base=base, extra_args=extra, cold=True)
        warm, _ = build(eng, dockerfile=dockerfile, tag=tag, base=base, extra_args=extra)
        rows.append((tag, size, cold, warm))
    print(f"base image {base}: ready in {base_seconds:.0f} s (tarball cached in {cache_dir() / 'base'})")
    print(f"{'image':48} {'size MB':>8} {'cold s':>7} {'warm s':>7}")
    for tag, size, cold, warm in rows:
        print(f"{tag:48} {size:8.0f} {cold:7.0f} {warm:7.1f}")
    peer = rows[-1][1]
    for tag, size, *_ in rows[:-1]:
        print(f"{tag}: {size / peer:.2f}x the size of the all-extras image ({peer:.0f} MB)")
    print(json.dumps({tag: {"size_mb": round(size), "cold_s": round(cold), "warm_s": round(warm, 1)}
                      for tag, size, cold, warm in rows}))


if __name__ == "__main__":
    main()
