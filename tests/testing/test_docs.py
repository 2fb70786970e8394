"""docs/testing.md: every Python block is a user's test module, and they all pass
under plain `pytest` outside the repository (as `test_plugin.py` runs them), on every
broker the page names: each test on each, except the one the page pins to the brokers
where time is virtual."""

import ast
import re
from pathlib import Path

from mailbag.broker import mask_url
from tests.moto_server import REGION, dummy_aws_credentials, shared_moto_server
from tests.rabbitmq.service import amqp_url
from tests.testing.test_plugin import plain_pytest

DOC = Path(__file__).parents[2] / "docs" / "testing.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
#: a test function, with the list of brokers it names itself (if it does)
TEST = re.compile(
    r'^((?:@pytest\.mark\.parametrize\("mailbag_broker_url", (\w+)\)\n)?)(?:async )?def (test_\w+)\((.*)\)', re.M
)


def test_every_python_block_of_the_testing_guide_passes_on_every_broker(tmp_path):
    # Given each Python block of the guide as a test module of its own
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 5, "a handler, a retry to the DLQ, a duplicate, a saga, a Lambda batch"
    for i, block in enumerate(blocks):
        (tmp_path / f"test_guide_{i}.py").write_text(block)
    brokers = [
        "memory://",
        f"sqs://?region={REGION}",
        f"sqs://?region={REGION}&endpoint={shared_moto_server()}",
        amqp_url(),
    ]
    # When plain pytest runs them on each broker the page names
    with dummy_aws_credentials():
        run = plain_pytest(tmp_path, "-rA", *(f"--mailbag-broker={b}" for b in brokers))
    # Then every test passed: on each broker if it takes the bus, on the virtual-time
    # brokers if it names them, once if it takes no broker
    assert run.returncode == 0, run.stdout + run.stderr
    passed = set(re.findall(r"^PASSED (\S+)", run.stdout, re.M))
    expected = set()
    for i, block in enumerate(blocks):
        for _, pinned, name, params in TEST.findall(block):
            test = f"test_guide_{i}.py::{name}"
            if pinned:
                [listed] = re.findall(rf"^{pinned} = (\[.*\])$", block, re.M)
                expected |= {f"{test}[{mask_url(b)}]" for b in ast.literal_eval(listed)}
            elif "mailbag_bus" in params:
                expected |= {f"{test}[{mask_url(b)}]" for b in brokers}
            else:
                expected.add(test)
    assert passed == expected, run.stdout
