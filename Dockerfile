# webchat as a container image: a wheel built in one stage, installed into a virtualenv, and
# only that virtualenv copied into the runtime stage (no compiler, pip or setuptools in it).
#
#   docker build -t webchat .
#   docker build --build-arg BASE_IMAGE=registry.example.com/python:3.11-slim-bookworm -t webchat .
#
# BASE_IMAGE must be a Debian-like image with Python 3.11+ whose `python3 -m venv` works
# (python:3.11-slim-bookworm does; a plain Debian needs python3-venv). Both stages use it, so
# the virtualenv's interpreter path is the same in both. Without a Docker engine or registry,
# docs/deploy.md ("Docker Compose") shows how to build it with podman from a local base.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
SHELL ["/bin/sh", "-eu", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the tree out).
COPY pyproject.toml README.md ./
COPY app ./app
COPY frontend ./frontend
# The wheel is built once (pip runs the setuptools backend in an isolated environment), then
# installed with its dependencies into the runtime virtualenv; pip and setuptools leave it.
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && python3 -m venv /opt/webchat \
 && /opt/webchat/bin/pip install /wheels/webchat-*.whl \
 && /opt/webchat/bin/pip uninstall --yes pip setuptools \
 && /opt/webchat/bin/webchat --help > /dev/null

FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/sh", "-eu", "-c"]
# A fixed numeric id, so a volume's owner or a runAsUser policy can name it.
RUN groupadd --system --gid 10001 webchat \
 && useradd --system --uid 10001 --gid webchat --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin webchat
COPY --from=build /opt/webchat /opt/webchat
ENV PATH=/opt/webchat/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080
# Numeric, so a runtime (Kubernetes runAsNonRoot) can tell it is not root without /etc/passwd.
USER 10001:10001
EXPOSE 8080
# Liveness only (/readyz also needs the broker). Python, because slim images have no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
# SIGTERM drains (clients are closed with 1012 and resume elsewhere); the process exits within
# 10 s, so give the container more than that before it is killed (Compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["webchat"]
