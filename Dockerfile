# syntax=docker/dockerfile:1
#
# voice-controlplane image.
#   docker build -t registry.example.com/voice-controlplane/controlplane:0.1.0 .
#   docker run --rm -p 8080:8080 registry.example.com/voice-controlplane/controlplane:0.1.0
#
# Both stages use the same pinned base so the venv built in the first one runs unchanged in
# the second. For fully reproducible builds also pin the digest, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm` prints it).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------
# builder: build the project wheel and install it (with its pinned dependencies) into a venv
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv

# Only what the wheel needs (see .dockerignore): metadata first, then the packages.
COPY pyproject.toml README.md ./
COPY controlplane ./controlplane
COPY sessions ./sessions
COPY policies ./policies
COPY emulator ./emulator

# All runtime dependencies ship manylinux wheels for CPython 3.11 (aiohttp, uvloop,
# pydantic-core, ...), so installing needs no compiler; --only-binary keeps it that way.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --only-binary=:all: /wheels/*.whl

# The compiled build (docs/architecture.md, "The compiled build"): the fan-out's per-session
# modules (sessions/native.py) compiled by mypyc against the installed dependencies, copied
# next to the installed sources with their manifest; the compiler, mypy and pip stay in this
# stage. `controlplane --help` imports the package: sessions.native.guard() refuses a build
# that does not match the sources it was built from, so a bad copy fails the image build.
# (--build-arg CONTROLPLANE_PURE=1: no compiled build, the sources run.) mypy and the stubs the
# compiled modules' imports need (yaml, via policies.documents) are pyproject's dev pins.
ARG CONTROLPLANE_PURE=0
COPY build_native.py ./
RUN if [ "$CONTROLPLANE_PURE" != 1 ]; then \
        apt-get update && apt-get install --yes --no-install-recommends gcc libc6-dev \
     && /opt/venv/bin/pip install --only-binary=:all: mypy==2.4.1 types-PyYAML==6.0.12.20261113 \
     && /opt/venv/bin/python build_native.py --require \
     && site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
     && find controlplane sessions -name '*.so' -exec cp --parents {} "$site"/ \; \
     && cp controlplane_native__mypyc.*.so "$site"/ \
     && cp sessions/native-build.json "$site"/sessions/ \
     && /opt/venv/bin/pip uninstall --yes mypy ast-serialize librt pathspec types-PyYAML; \
    fi \
 && /opt/venv/bin/pip uninstall --yes pip \
 && /opt/venv/bin/controlplane --help > /dev/null \
 && /opt/venv/bin/python -c 'from sessions import native; import controlplane.app; \
        loaded = native.compiled_modules(); print("compiled:", sum(loaded.values()), "of", len(loaded))'

# ---------------------------------------------------------------------------------------
# runtime: slim base, the venv, a non-root user; no compilers, no pip, no build tools
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="voice-controlplane" \
      org.opencontainers.image.description="Control plane for live AssemblyAI voice sessions" \
      org.opencontainers.image.licenses="Apache-2.0"

# Fixed ids so Kubernetes can check runAsNonRoot/runAsUser (chart default 10001).
RUN groupadd --system --gid 10001 controlplane \
 && useradd --system --uid 10001 --gid controlplane --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin controlplane \
 && install -d -o controlplane -g controlplane -m 0750 /var/lib/controlplane

COPY --from=builder /opt/venv /opt/venv

# Read-only root filesystem friendly: no .pyc writes, data under CONTROLPLANE_DATA_DIR.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONTROLPLANE_DATA_DIR=/var/lib/controlplane

WORKDIR /var/lib/controlplane
USER 10001:10001
EXPOSE 8080

# SIGTERM starts the drain: not ready, stop accepting, let sessions finish for up to
# CONTROLPLANE_SHUTDOWN_GRACE_S, then close with 1012. `controlplane` runs as PID 1 and
# handles SIGTERM itself (exec form, no shell in between).
STOPSIGNAL SIGTERM
ENTRYPOINT ["controlplane"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
