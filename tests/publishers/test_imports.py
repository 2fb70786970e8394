"""Publishing reaches brokers only through the `broker` contract: importing it pulls in
no broker SDK, and no database driver until a PostgreSQL outbox is asked for."""

import subprocess
import sys


def test_importing_publishers_loads_no_broker_sdk_and_no_postgres_driver():
    probe = (
        "import sys, publishers, publishers.outbox; "
        "print(sorted(m for m in ('aio_pika', 'aiormq', 'boto3', 'botocore', 'asyncpg') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"
