# The container for `mailbag worker`. NOT BUILT HERE: the project is developed and
# tested where no Docker engine runs, so build and try the image before relying on it.
#
#   docker build -t mailbag-worker .
#   docker run --rm -e MAILBAG_BROKER_URL='sqs://?region=eu-west-1' \
#       -e MAILBAG_IDEMPOTENCY_URL='dynamodb://mailbag-idempotency?region=eu-west-1' \
#       mailbag-worker --metrics-port 9102 myservice.handlers:app
#
# No secret is baked in: the broker and store URLs come from the environment at run
# time, and AWS credentials from the standard chain (on ECS, the task role). Without
# MAILBAG_BROKER_URL the worker stops at once (exit 2); MAILBAG_BROKER_URL=memory://
# runs it on the in-memory broker on purpose. Put your service's code in an image
# built FROM this one, or pip-install it here.
#
# Base image: python:3.12-slim-bookworm pinned by the digest of its multi-platform
# index (Python 3.12.14, published 2026-08-25, as docker-library/repo-info records
# it; it was not pulled where this file was written). To move to a newer build, run
#   docker buildx imagetools inspect python:3.12-slim-bookworm
# and put the "Digest:" it prints in both FROM lines, then build and test again.
#
# Dependencies: exact versions from docker/constraints.txt, which `make constraints`
# makes from pyproject.toml; run it whenever the dependencies there change.

FROM python:3.12-slim-bookworm@sha256:0f5b26b9518d002b6173fd61daad821fa340635ebfec5bba471013f9ca114579 AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# the source stays in this stage: the image below takes only the installed environment
WORKDIR /src
COPY . .
RUN python -m venv /opt/mailbag \
    && /opt/mailbag/bin/pip install --no-cache-dir --constraint docker/constraints.txt ".[redis,postgres]"

FROM python:3.12-slim-bookworm@sha256:0f5b26b9518d002b6173fd61daad821fa340635ebfec5bba471013f9ca114579

# MAILBAG_GRACE_PERIOD: in-flight handlers get 25 s after SIGTERM, inside ECS's
# default 30 s stop timeout, so unfinished messages are returned before the SIGKILL
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/mailbag/bin:$PATH \
    MAILBAG_GRACE_PERIOD=25 \
    MAILBAG_REQUIRE_BROKER_URL=true

COPY --from=build /opt/mailbag /opt/mailbag
RUN useradd --create-home --uid 10001 mailbag

USER 10001
WORKDIR /home/mailbag

# /healthz, /readyz and /metrics. The health check asks /healthz (liveness): /readyz
# is 503 while the broker is down, and a container replaced for that would end the
# reconnect that rides the outage out. /readyz is for load balancers and readiness
# probes. ECS ignores this HEALTHCHECK: give the task definition its own (docs/aws.md).
EXPOSE 9102
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["mailbag", "health", "--probe", "liveness", "--port", "9102"]

# exec form: the worker is PID 1 and receives SIGTERM itself (no shell in between)
STOPSIGNAL SIGTERM
ENTRYPOINT ["mailbag", "worker"]
CMD ["--metrics-port", "9102", "mailbag.examples.orders.app:app"]
