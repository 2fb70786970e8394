"""cfn-lint (errors and warnings; its informational hints are not checked) finds
nothing in the templates we export: the order app's, written by the command line, and
one with FIFO queues, filters and a named dead-letter queue."""

import json
import subprocess
import sys

from cfnlint.api import lint

from mailbag.deploy.cloudformation import template
from tests.cloudformation.topologies import everything

REGIONS = ["us-east-1", "eu-west-1"]


def _problems(text: str) -> list[str]:
    return [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in lint(text, regions=REGIONS)]


def test_the_order_app_template_the_command_line_writes_is_clean(tmp_path):
    out = tmp_path / "orders.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailbag.cli",
            "topology",
            "export",
            "mailbag.examples.orders.app:app",
            "--format",
            "cloudformation",
            "--prefix",
            "shop-",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert len(json.loads(text)["Resources"]) > 20
    assert _problems(text) == []


def test_a_template_with_fifo_filters_and_a_named_dlq_is_clean():
    assert _problems(json.dumps(template(everything(), prefix="dev-", visibility=900))) == []


def test_the_linter_would_report_a_broken_template():
    # Given a template whose redrive points at a queue that is not in it
    broken = template(everything())
    broken["Resources"]["QueueAudit"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"] = {
        "Fn::GetAtt": ["QueueNowhere", "Arn"]
    }
    broken["Resources"]["QueueAudit"]["Properties"]["VisibilityTimeout"] = 99_999
    # Then the lint finds both faults
    problems = _problems(json.dumps(broken))
    assert any("QueueNowhere" in p for p in problems), problems
    assert any("99999" in p for p in problems), problems
