"""`mailbag topology export`, run as a user runs it."""

import json
import subprocess
import sys

import pytest

APP = "mailbag.examples.orders.app:app"


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailbag.cli", "topology", "export", *args],
        capture_output=True,
        text=True,
        timeout=60,
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
    assert result.stderr.strip() == f"wrote a CloudFormation template for 8 topic(s) and 5 queue(s) to {out}"


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
    assert result.stderr.strip() == (
        f"wrote a CloudFormation template for 8 topic(s), 5 queue(s) and 5 Lambda function(s) to {out}"
    )
    resources = json.loads(out.read_text())["Resources"].values()
    assert {r["Properties"]["VisibilityTimeout"] for r in resources if r["Type"] == "AWS::SQS::Queue"} == {60}
