"""cfn-lint (errors and warnings; its informational hints are not checked) finds
nothing in the templates we export: the order app's, written by the command line (with
and without Lambda functions), one with FIFO queues, filters and a named dead-letter
queue, and the same with Lambda triggers on its FIFO and standard queues."""

import json
import subprocess
import sys

import pytest
from cfnlint.api import lint

from mailbag.deploy.cloudformation import LambdaFunctions, template
from tests.cloudformation.topologies import everything, lambda_ready

REGIONS = ["us-east-1", "eu-west-1"]


def _problems(text: str) -> list[str]:
    return [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in lint(text, regions=REGIONS)]


@pytest.mark.parametrize("options", [(), ("--lambda", "shop.aws.handler")])
def test_the_order_app_template_the_command_line_writes_is_clean(tmp_path, options):
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
            *options,
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    resources = json.loads(text)["Resources"].values()
    assert len(resources) > 20
    triggers = [r for r in resources if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert len(triggers) == (5 if options else 0)
    assert _problems(text) == []


def test_a_template_with_fifo_filters_and_a_named_dlq_is_clean():
    assert _problems(json.dumps(template(everything(), prefix="dev-", visibility=900))) == []


def test_a_template_with_lambda_triggers_on_fifo_and_standard_queues_is_clean():
    functions = LambdaFunctions("svc.aws.handler", timeout=60)
    t = template(lambda_ready(), prefix="dev-", visibility=400, functions=functions, retain_queues=True)
    assert _problems(json.dumps(t)) == []


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
