"""Fixtures shared across the test packages: moto's AWS in this process, and plain
boto3 clients to look at what the code under test made there."""

import boto3
import pytest
from moto import mock_aws

from tests.moto_server import REGION, dummy_aws_credentials


@pytest.fixture
def aws():
    """moto in process for the whole test (worker threads included), with credentials
    it accepts."""
    with dummy_aws_credentials(), mock_aws():
        yield


@pytest.fixture
def sqs(aws):
    return boto3.client("sqs", region_name=REGION)


@pytest.fixture
def sns(aws):
    return boto3.client("sns", region_name=REGION)
