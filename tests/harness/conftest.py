import subprocess
import uuid

import pytest

from mailbag.harness import Settings
from tests.names import RUN_PREFIX
from tests.rabbitmq.service import START, amqp_url

#: small and impatient: a scenario on memory takes well under a second
FAST = Settings(
    messages=40,
    keys=4,
    consumers=3,
    batch=10,
    retry_every=5,
    retry_delay=0.05,
    grace=0.1,
    idle_timeout=0.5,
    delay_tolerance=0.1,
    jitter=0.001,
)


def rabbitmqctl(*args: str) -> str:
    try:
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"rabbitmqctl {args[0]} failed ({exc!r}); {START}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()}; {START}", pytrace=False)
    return done.stdout


@pytest.fixture
def own_vhost():
    """A RabbitMQ vhost of the test's own, deleted afterwards: every name and message in
    it is the test's, whatever runs beside it."""
    amqp_url()  # fails the test, saying how to start RabbitMQ, when it is not listening
    name = f"{RUN_PREFIX}compare-{uuid.uuid4().hex[:6]}"  # tests beside it have their own
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)
