# The two commands of the README: `make demo` and `make test`.
# Both work on a fresh machine: they fetch uv from PyPI when it is missing,
# create .venv from uv.lock, and build what the tests need.

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
# The uv fetched above, for tools/k8s/build.sh (etcd's wheel). The tests of `package` and
# `serve` run the console script with a PATH of their own, without it: a reader's shell has none.
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: demo test venv k8s-bins images bench lint clean

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-groups --all-extras
	touch $@

venv: $(VENV)/.synced

# kube-apiserver, controller-manager, scheduler, kwok, helm, etcd and SeaweedFS's weed (the
# tests' S3 server), built or fetched once per version into ~/.cache/modelcycle/k8s/<version>/.
k8s-bins: venv
	@if [ -x tools/k8s/build.sh ]; then tools/k8s/build.sh; fi

# The modelcycle and operator images, with Docker or podman (installed with apt when
# neither is there and we are root on Debian/Ubuntu); a local Debian base where no image
# registry can be reached. IMAGES_ARGS="--save DIR" also writes OCI archives.
images: venv
	$(PY) -m modelcycle.cluster.images $(IMAGES_ARGS)

demo: venv
	$(VENV)/bin/modelcycle demo

# The tests run a real Prometheus (scraping the gateway) and a real PostgreSQL (a SQL source
# with a password): Debian's packages, installed with apt when missing.
test: venv k8s-bins images
	tools/debian-packages.sh prometheus postgresql
	$(PY) -m pytest

bench: venv
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) .tools .pytest_cache build dist
