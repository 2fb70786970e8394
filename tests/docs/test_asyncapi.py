"""`mailbag docs` on the order-flow app writes an AsyncAPI 3.0 document that the
official schema accepts, and that says what the app declares."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from mailbag.examples.orders.app import app
from mailbag.examples.orders.events import OrderCreated

SCHEMA = json.loads((Path(__file__).parent / "asyncapi-3.0.0.json").read_text())
APP = "mailbag.examples.orders.app:app"


def mailbag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailbag.cli", *args], capture_output=True, text=True, timeout=60)


def errors(doc: dict) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(doc)]


@pytest.fixture(scope="module", params=["yaml", "json"])
def doc(request, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("docs") / f"shop.{request.param}"
    result = mailbag("docs", APP, "--format", request.param, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(out.read_text()) if request.param == "yaml" else json.loads(out.read_text())


def test_the_document_validates_against_the_asyncapi_3_schema(doc):
    assert doc["asyncapi"] == "3.0.0"
    assert errors(doc) == []


def test_the_schema_check_is_strict():
    # the same document with an exchange type AMQP does not have, and an operation
    # with an action AsyncAPI does not know, is refused on both counts
    broken = json.loads(mailbag("docs", APP, "--format", "json").stdout)
    broken["channels"]["orders.created"]["bindings"]["amqp"]["exchange"]["type"] = "fan"
    next(iter(broken["operations"].values()))["action"] = "consume"
    found = errors(broken)
    assert any("orders.created" in e for e in found) and any("operations" in e for e in found), found


def test_channels_operations_and_payloads_follow_the_app(doc):
    topology = app.topology
    assert {c["address"] for c in doc["channels"].values()} == set(topology.topics) | {q.name for q in topology.queues}
    receives = [op for op in doc["operations"].values() if op["action"] == "receive"]
    assert len(receives) == len(app.handlers)
    sends = {op["channel"]["$ref"] for op in doc["operations"].values() if op["action"] == "send"}
    assert sends == {f"#/channels/{t}" for t in app.published_topics}
    # a handler's model is its message's payload; the model's nested types are components
    message = doc["components"]["messages"]["OrderCreated"]
    expected = OrderCreated.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = expected.pop("$defs")
    assert message["payload"] == expected
    assert all(doc["components"]["schemas"][name] == schema for name, schema in nested.items())
    # every reference points at something in the document
    for ref in _refs(doc):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]


def test_queue_channels_carry_amqp_and_sqs_bindings(doc):
    queue = app.topology.queues[0]
    bindings = doc["channels"][queue.name]["bindings"]
    assert bindings["amqp"]["queue"]["name"] == queue.name
    assert bindings["sqs"]["deadLetterQueue"]["name"] == queue.dead_letter_queue.replace(".", "_")


def test_a_missing_output_folder_is_one_line(tmp_path):
    result = mailbag("docs", APP, "--out", str(tmp_path / "nowhere" / "shop.yaml"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "does not exist" in result.stderr


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)
