"""docs/aws.md's export and deploy commands, run as written: each `mailbag topology
export` (the order app standing in for `myservice.handlers:app`), then each `aws
cloudformation deploy` with the AWS CLI against a moto_server of the test's own. The
AWS CLI refuses a template over CloudFormation's inline limit unless `--s3-bucket`
uploads it first, as AWS does, so a deploy the doc writes without it fails here too."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

from mailbag.deploy.cloudformation import INLINE_TEMPLATE_MAX
from tests.moto_server import REGION, MotoServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "aws.md"
#: a fenced block; those with a language (JSON, Python) hold no command
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
APP = "mailbag.examples.orders.app:app"


def commands() -> list[list[str]]:
    """Every `mailbag topology export` and `aws cloudformation deploy` of the doc, in order."""
    found = []
    for language, block in BLOCK.findall(DOC.read_text()):
        if language:
            continue
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith(("mailbag topology export ", "aws cloudformation deploy ")):
                found.append(shlex.split(line, comments=True))
    return found


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


@pytest.fixture
def aws_cli_on_moto(tmp_path):
    """The environment for the AWS CLI to talk to a moto_server of this test's own, with
    the bucket the doc's Lambda deploy keeps its code in, holding that code."""
    aws = shutil.which("aws")
    if aws is None:
        pytest.fail("the AWS CLI is not installed: `pip install awscli` (or AWS CLI v2)", pytrace=False)
    server = MotoServer()
    # moto finds an uploaded template by the bucket in its URL's path only for a localhost endpoint
    endpoint = server.url.replace("127.0.0.1", "localhost")
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    env.pop("AWS_PROFILE", None)
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    s3.create_bucket(Bucket="shop-artifacts", CreateBucketConfiguration={"LocationConstraint": REGION})
    package = tmp_path / "shop-1.4.0.zip"
    with zipfile.ZipFile(package, "w") as z:
        z.writestr("myservice/aws.py", "def handler(event, context): ...\n")
    s3.upload_file(str(package), "shop-artifacts", "shop-1.4.0.zip")
    try:
        yield (
            aws,
            env,
            boto3.client(
                "cloudformation",
                endpoint_url=endpoint,
                region_name=REGION,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            ),
        )
    finally:
        server.stop()


def test_the_docs_export_and_deploy_commands_run_as_written(tmp_path, aws_cli_on_moto):
    aws, env, cloudformation = aws_cli_on_moto
    sizes: dict[str, int] = {}
    deployed = []
    for words in commands():
        if words[0] == "mailbag":
            # When the doc's export runs as written
            args = [APP if w == "myservice.handlers:app" else w for w in words[1:]]
            run = subprocess.run(
                [sys.executable, "-m", "mailbag.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
            assert run.returncode == 0, run.stderr
            out = option(words, "--output")
            sizes[out] = (tmp_path / out).stat().st_size
            # (and says how to deploy a template too large to pass inline)
            assert ("--s3-bucket" in run.stderr) == (sizes[out] > INLINE_TEMPLATE_MAX), run.stderr
            continue
        # and the deploy after it, as written
        run = subprocess.run([aws, *words[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        # Then the stack is made (or updated) from the template the export wrote
        assert run.returncode == 0, run.stdout + run.stderr
        [stack] = cloudformation.describe_stacks(StackName=option(words, "--stack-name"))["Stacks"]
        assert stack["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE"), stack
        template = json.loads((tmp_path / option(words, "--template-file")).read_text())
        deployed.append((sizes[option(words, "--template-file")], template))
    # Both deploys ran: the worker stack, inline, then the Lambda one, over the inline limit
    assert [size > INLINE_TEMPLATE_MAX for size, _ in deployed] == [False, True]
    listed = cloudformation.list_stack_resources(StackName="shop-mailbag")["StackResourceSummaries"]
    functions = [r for r in listed if r["ResourceType"] == "AWS::Lambda::Function"]
    assert len(functions) == sum(r["Type"] == "AWS::Lambda::Function" for r in deployed[-1][1]["Resources"].values())
    assert functions


def test_the_aws_cli_refuses_an_inline_template_over_the_limit(tmp_path, aws_cli_on_moto):
    # Given the doc's Lambda template, larger than CloudFormation takes inline
    aws, env, _ = aws_cli_on_moto
    [export] = [w for w in commands() if w[0] == "mailbag" and "--lambda" in w]
    args = [APP if w == "myservice.handlers:app" else w for w in export[1:]]
    subprocess.run([sys.executable, "-m", "mailbag.cli", *args], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / option(export, "--output")).stat().st_size > INLINE_TEMPLATE_MAX
    # When it is deployed without --s3-bucket
    run = subprocess.run(
        [aws, "cloudformation", "deploy", "--stack-name", "big", "--template-file", option(export, "--output")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Then the AWS CLI refuses it, as it would against AWS
    assert run.returncode != 0
    assert "greater than 51,200 bytes must be deployed via an S3 Bucket" in run.stdout + run.stderr
