# The operator image: the Kopf operator only (the `operator` extra), from uv.lock, started
# as `python -m modelcycle.operator`. Same build as the Dockerfile next to it (see there
# for BASE_IMAGE and the CA bundle).
#
#   make images
#   docker build -f operator.Dockerfile --build-arg BASE_IMAGE=python:3.11-slim -t modelcycle/modelcycle-operator:0.1.0 .
#
# The chart runs it as uid 10001 with a read-only root filesystem and an emptyDir on /tmp.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON=python3 \
    UV_PYTHON_DOWNLOADS=never SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir --quiet uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv /opt/uv/bin/uv sync --frozen --no-dev --no-install-project --extra operator
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv /opt/uv/bin/uv sync --frozen --no-dev --no-editable --extra operator

FROM ${BASE_IMAGE}
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin modelcycle
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001
WORKDIR /tmp
EXPOSE 8081 9090
ENTRYPOINT ["python", "-m", "modelcycle.operator"]
