# The container for `mailbag worker`. NOT BUILT HERE: the project is developed and
# tested where no Docker engine runs, so build and try the image before relying on it.
#
#   docker build -t mailbag-worker .
#   docker run --rm -e MAILBAG_BROKER_URL='sqs://?region=eu-west-1' \
#       -e MAILBAG_IDEMPOTENCY_URL='dynamodb://mailbag-idempotency?region=eu-west-1' \
#       mailbag-worker --metrics-port 9102 myservice.handlers:app
#
# No secret is baked in: the broker and store URLs come from the environment at run
# time, and AWS credentials from the standard chain (on ECS, the task role). Put your
# service's code in an image built FROM this one, or pip-install it here.

FROM python:3.12-slim

# MAILBAG_GRACE_PERIOD: in-flight handlers get 25 s after SIGTERM, inside ECS's
# default 30 s stop timeout, so unfinished messages are returned before the SIGKILL
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAILBAG_GRACE_PERIOD=25

COPY . /src
RUN pip install "/src[redis,postgres]" \
    && rm -rf /src \
    && useradd --create-home --uid 10001 mailbag

USER 10001
WORKDIR /home/mailbag

EXPOSE 9102
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["mailbag", "health", "--port", "9102"]

# exec form: the worker is PID 1 and receives SIGTERM itself (no shell in between)
STOPSIGNAL SIGTERM
ENTRYPOINT ["mailbag", "worker"]
CMD ["--metrics-port", "9102", "mailbag.examples.orders.app:app"]
