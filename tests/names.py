"""Names for what a test run declares on shared services. Every name starts with the
run's own prefix, so two pytest sessions sharing a RabbitMQ vhost (or a moto server)
never touch each other's names, and a session's cleanup deletes only its own."""

from __future__ import annotations

import re
import secrets
import uuid

#: this pytest session's name prefix: every broker name the run declares starts with it
RUN_PREFIX = f"mbt{secrets.token_hex(3)}-"
#: any run's prefix
RUN_PREFIXES = re.compile(r"mbt[0-9a-f]{6}-")


def run_name(tag: str) -> str:
    """A fresh name stem for one test: the run's prefix, `tag`, a random part."""
    return f"{RUN_PREFIX}{tag}{uuid.uuid4().hex[:8]}"
