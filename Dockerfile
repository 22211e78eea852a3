# The modelcycle image: the Kubeflow components and the gateway run on it (the
# `pipelines` and `serving` extras). Built from uv.lock, so the image has exactly the
# tested dependency set, and the pipeline's components pip-install nothing at run time.
#
#   make images     (python -m modelcycle.cluster.images: picks the engine and the base)
#   docker build --build-arg BASE_IMAGE=python:3.11-slim -t modelcycle/modelcycle-python:0.1.0 .
#
# BASE_IMAGE is any image with Python 3.11 and its venv module on PATH as python3: the
# public slim image, or the Debian base `make images` bootstraps where no image registry
# can be reached. The build steps read the system CA bundle, which `make images` mounts
# from the host for a TLS-inspecting proxy; nothing of it stays in the image.
ARG BASE_IMAGE=python:3.11-slim
ARG EXTRAS="--extra pipelines --extra serving"

FROM ${BASE_IMAGE} AS build
ARG EXTRAS
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON=python3 \
    UV_PYTHON_DOWNLOADS=never SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir --quiet uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv /opt/uv/bin/uv sync --frozen --no-dev --no-install-project $EXTRAS
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv /opt/uv/bin/uv sync --frozen --no-dev --no-editable $EXTRAS

FROM ${BASE_IMAGE}
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin modelcycle
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp
USER 10001
WORKDIR /tmp
# No ENTRYPOINT: Kubeflow's launcher (and kfp.local.DockerRunner, which sets only the
# container's arguments) and the operator's gateway each give the whole command.
CMD ["modelcycle", "--help"]
