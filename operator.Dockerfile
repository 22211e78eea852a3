# The operator image: the modelcycle image's virtualenv (built from uv.lock, so exactly the
# tested dependency set), started as `python -m modelcycle.operator`.
#
#   docker build -f operator.Dockerfile -t modelcycle/modelcycle-operator:0.1.0 .
#
# The chart runs it as uid 10001 with a read-only root filesystem and an emptyDir on /tmp.
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin modelcycle
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /tmp
EXPOSE 8081 9090
ENTRYPOINT ["python", "-m", "modelcycle.operator"]
