"""Every bad input a new user met in their first hour, driven through the command line
as they ran it: one line on stderr, no traceback, no library log line before it, exit 2,
and nothing created or sent on the way."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.rabbitmq.service import amqp_url


def mailbag(*args: str, env: dict | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailbag.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def assert_one_line(result: subprocess.CompletedProcess, says: str, *, output: str = "") -> None:
    """Exit 2, `says` in the one line on stderr, and nothing on stdout but `output`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mailbag: error: "), result.stderr
    assert says in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == output


@pytest.fixture
def no_broker_configured(monkeypatch):
    monkeypatch.delenv("MAILBAG_BROKER_URL", raising=False)


def test_publish_with_no_broker_configured_is_refused_not_lost(no_broker_configured):
    # the default memory:// broker would live and die with this one command
    result = mailbag("publish", "orders.placed", '{"order_id": "o-1", "amount_cents": 100}')
    assert_one_line(result, "memory:// lives inside one process")
    assert "--broker amqp://" in result.stderr


def test_rabbitmq_url_faults_each_say_what_is_wrong():
    good = amqp_url()
    base = good.rsplit("/", 1)[0]
    cases = [
        # a password with reserved characters, not percent-encoded: the URL did not parse
        (f"{base.replace('guest:guest', 'guest:s3c@r/t!')}/", "does not parse"),
        # a vhost that does not exist: RabbitMQ closes the connection during the handshake
        (f"{base}/mb-no-such-vhost", "vhost 'mb-no-such-vhost'"),
        # an option aio-pika would silently ignore
        (f"{good}?queues=quorum", "unknown option(s) queues"),
        # a queue type RabbitMQ does not have (`mailbag compare` says the same)
        (f"{good}?queue=lazy", "queue='lazy'"),
        # a node list with a bad port in its second node
        (f"{base.replace('127.0.0.1:5672', '127.0.0.1:5672,127.0.0.1:x')}/", "does not parse (bad port)"),
        # nothing listens there: the error says how to wait, and ?wait= works
        ("amqp://guest:guest@127.0.0.1:1/?wait=0.5", "after trying for 0.5s"),
        ("amqp://guest:guest@127.0.0.1:1/?wait=soon", "wait must be a number"),
    ]
    for url, says in cases:
        result = mailbag("queues", "--queue", "q", "--broker", url)
        assert_one_line(result, says)
        assert "s3c" not in result.stderr


def test_unreachable_broker_error_offers_the_wait_option_the_url_accepts():
    result = mailbag("queues", "--queue", "q", "--broker", "amqp://guest:guest@127.0.0.1:1/")
    assert_one_line(result, "is unreachable")
    assert "?wait=SECONDS" in result.stderr


def test_worker_on_an_unreachable_broker_prints_only_its_own_line():
    result = mailbag("worker", "mailbag.examples.orders.app:app", "--broker", "amqp://guest:guest@127.0.0.1:1/")
    assert_one_line(result, "is unreachable")


def test_unknown_option_on_memory_url_is_refused():
    result = mailbag("topology", "apply", "mailbag.examples.orders.app:app", "--broker", "memory://?prefetch=5")
    assert_one_line(result, "unknown option(s) prefetch")


def test_malformed_json_body_is_refused_and_raw_sends_text(no_broker_configured):
    assert_one_line(mailbag("publish", "orders", '{"job_id": 1,'), "looks like JSON but does not parse")
    assert_one_line(mailbag("publish", "orders", "[1, 2"), "--raw")


def test_outbox_status_on_a_misspelt_sqlite_path_creates_nothing(tmp_path):
    missing = tmp_path / "shpo.db"
    assert_one_line(mailbag("outbox", "status", "--db", f"sqlite:///{missing}"), "no SQLite database at")
    assert not missing.exists()
    in_missing_folder = tmp_path / "nowhere" / "shop.db"
    assert_one_line(
        mailbag("outbox", "relay", "--once", "--db", f"sqlite:///{in_missing_folder}"), "no SQLite database"
    )
    assert not in_missing_folder.parent.exists()


@pytest.fixture
def without(tmp_path):
    """An environment in which importing the named packages fails as if they were not
    installed (a `sitecustomize` that refuses them), as for `pip install mailbag`."""

    def env(*packages: str) -> dict:
        (tmp_path / "sitecustomize.py").write_text(
            textwrap.dedent(
                f"""
                import sys
                class _Absent:
                    def find_spec(self, name, path=None, target=None):
                        if name.split(".")[0] in {packages!r}:
                            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                sys.meta_path.insert(0, _Absent())
                """
            )
        )
        return {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    return env


def test_missing_extras_name_the_extra_to_install(without, tmp_path):
    absent = without("redis", "asyncpg")
    result = mailbag(
        "worker", "mailbag.examples.orders.app:app", "--idempotency-url", "redis://127.0.0.1:6379/0", env=absent
    )
    assert_one_line(result, "pip install 'mailbag[redis]'")
    result = mailbag("outbox", "status", "--db", "postgresql://app:hunter2@127.0.0.1/test", env=absent)
    assert_one_line(result, "pip install 'mailbag[postgres]'")
    assert "hunter2" not in result.stderr


def test_stores_that_cannot_open_are_one_line(tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    assert_one_line(
        mailbag("demo", "--mode", "saga", "--store", f"sqlite:///{not_a_folder}/sagas.db"),
        "cannot open the SQLite database",
        output="broker: memory://  mode: saga\n",
    )
    result = mailbag(
        "worker", "mailbag.examples.orders.app:app", "--idempotency-url", "postgresql://postgres@127.0.0.1:1/test"
    )
    assert_one_line(result, "idempotency store postgresql://postgres@127.0.0.1:1/test: cannot reach PostgreSQL")


@pytest.mark.parametrize(
    "source, says, line",
    [
        (
            "import json\n\ndef setup():\n    return 1 / 0\n\nCONFIG = setup()\n",
            "ZeroDivisionError: division by zero",
            4,
        ),
        ("import os\nTOKEN = os.environ['MB_NO_SUCH_VARIABLE']\n", "KeyError: 'MB_NO_SUCH_VARIABLE'", 2),
        ("import json\nimport mb_no_such_dependency\n", "No module named 'mb_no_such_dependency'", 2),
        ("def f(:\n    pass\n", "SyntaxError: invalid syntax", 1),
    ],
)
def test_an_app_module_that_fails_to_import_is_one_line_with_where(tmp_path, source, says, line):
    # Given the user's module raising (or not parsing) as it is imported
    (tmp_path / "svc.py").write_text(source)
    for command in (("worker", "svc:app"), ("topology", "apply", "svc:app"), ("docs", "svc:app")):
        result = mailbag(*command, cwd=str(tmp_path))
        # Then one line names the error and the user's file and line, exit 2
        assert_one_line(result, says)
        assert f"(at {tmp_path / 'svc.py'}:{line})" in result.stderr


def test_reserved_headers_are_refused_before_anything_is_sent():
    result = mailbag("publish", "orders", "{}", "--header", "x-mailbag-attempt=3", "--broker", amqp_url())
    assert_one_line(result, "header 'x-mailbag-attempt' is in the reserved x-mailbag-* namespace")
    result = mailbag("publish", "orders", "{}", "--header", "X-Mailbag-Dead-Reason=x", "--broker", amqp_url())
    assert_one_line(result, "reserved")
