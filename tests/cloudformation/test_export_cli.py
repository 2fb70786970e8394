"""`mailbag topology export`, run as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mailbag.deploy.cloudformation import INLINE_TEMPLATE_MAX

APP = "mailbag.examples.orders.app:app"


def export(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailbag.cli", "topology", "export", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_the_template_goes_to_standard_output_with_the_given_prefix_and_visibility():
    result = export(
        "mailbag.examples.orders.app:app", "--format", "cloudformation", "--prefix", "prod-", "--visibility", "120"
    )
    assert result.returncode == 0, result.stderr
    t = json.loads(result.stdout)
    queues = [r["Properties"] for r in t["Resources"].values() if r["Type"] == "AWS::SQS::Queue"]
    assert queues and all(q["QueueName"].startswith("prod-") and q["VisibilityTimeout"] == 120 for q in queues)
    assert result.stderr == ""


def test_writing_a_file_says_what_it_wrote(tmp_path):
    out = tmp_path / "stack.json"
    result = export("mailbag.examples.orders.app:app", "--format", "cloudformation", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["AWSTemplateFormatVersion"] == "2010-09-09"
    assert result.stdout == ""
    assert result.stderr.strip() == f"wrote a CloudFormation template for 7 topic(s) and 5 queue(s) to {out}"


@pytest.mark.parametrize(
    "args, says",
    [
        (("mailbag.examples.orders.app:app", "--format", "terraform"), "invalid choice: 'terraform'"),
        (("mailbag.examples.orders.app:app",), "--format"),
        (
            ("mailbag.examples.orders.app:app", "--format", "cloudformation", "--prefix", "a.b"),
            "prefix 'a.b' may hold only",
        ),
        (("mailbag.examples.orders.app:app", "--format", "cloudformation", "--visibility", "-1"), "visibility must be"),
        (
            ("mailbag.examples.orders.app:app", "--format", "cloudformation", "-o", "/no/such/dir/t.json"),
            "cannot write /no/such/dir/t.json",
        ),
        (("no_such_module:app", "--format", "cloudformation"), "cannot import module 'no_such_module'"),
        (
            (APP, "--format", "cloudformation", "--lambda", "shop.aws.handler", "--visibility", "60"),
            "visibility 60s is below 6 x the Lambda timeout (180s)",
        ),
        (
            (APP, "--format", "cloudformation", "--lambda", "shop.aws.handler", "--lambda-queue", "nope"),
            "no queue 'nope' to give a Lambda trigger",
        ),
        ((APP, "--format", "cloudformation", "--lambda", "shop:app"), "must read module.attribute"),
        ((APP, "--format", "cloudformation", "--lambda-timeout", "10"), "go with --lambda HANDLER"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(args, says):
    result = export(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert result.stdout == ""


def test_a_lambda_export_says_how_many_functions_it_wrote_and_sizes_visibility_for_them(tmp_path):
    out = tmp_path / "stack.json"
    result = export(
        APP, "--format", "cloudformation", "--lambda", "shop.aws.handler", "--lambda-timeout", "10", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    size = out.stat().st_size
    assert size > INLINE_TEMPLATE_MAX
    assert result.stderr.strip().splitlines() == [
        f"wrote a CloudFormation template for 7 topic(s), 5 queue(s) and 5 Lambda function(s) to {out}",
        f"the template is {size:,} bytes, over the 51,200 CloudFormation takes inline: "
        "deploy it with `aws cloudformation deploy --s3-bucket BUCKET ...`, which uploads it first",
    ]
    resources = json.loads(out.read_text())["Resources"].values()
    assert {r["Properties"]["VisibilityTimeout"] for r in resources if r["Type"] == "AWS::SQS::Queue"} == {60}


def test_a_lambda_export_of_a_queue_of_three_attempts_is_refused_in_one_line(tmp_path):
    # Given an app whose handler gives up after 3 attempts
    (tmp_path / "few.py").write_text(
        "from mailbag import App, RetryPolicy\n"
        "app = App('svc')\n"
        "@app.handler('orders.placed', retry=RetryPolicy(max_attempts=3))\n"
        "async def handle(order: dict) -> None: ...\n"
    )
    # When it is exported with Lambda triggers, and without
    refused = export("few:app", "--format", "cloudformation", "--lambda", "svc.aws.handler", cwd=tmp_path)
    plain = export("few:app", "--format", "cloudformation", cwd=tmp_path)
    # Then the Lambda export exits 2 with one line naming the queue and the fix; the plain one exports
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "mailbag: error: queue 'svc.handle' dead-letters after 3 attempt(s), below the 5 receives a Lambda "
        "trigger needs (each receive is an attempt, throttled ones too): give its handlers "
        "RetryPolicy(max_attempts=5) or more"
    ]
    assert plain.returncode == 0, plain.stderr
