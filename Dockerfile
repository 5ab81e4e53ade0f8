FROM python:3.11-slim
RUN useradd --create-home --uid 1000 claw
WORKDIR /app
COPY pyproject.toml README.md ./
COPY claw_worker ./claw_worker
COPY claw_ingress ./claw_ingress
COPY beat_schedules ./beat_schedules
RUN pip install --no-cache-dir .
USER claw
ENV CLAW_HOME=/home/claw/.claw PYTHONUNBUFFERED=1
