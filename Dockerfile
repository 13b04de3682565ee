# The position-manager service image: API (bin/serve), consumers (bin/consume), jobs and scheduler
# (bin/scheduler, bin/snapshot, ...), migrations (bin/migrate). docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PM_PYTHON=python3

WORKDIR /app

# Dependencies first (cached while only sources change).
COPY setup.cfg pyproject.toml README.md ./
COPY app ./app
COPY consumers ./consumers
COPY jobs ./jobs
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /app positionmanager

COPY sql ./sql
COPY bin ./bin

USER positionmanager
EXPOSE 4800
CMD ["bin/serve"]
