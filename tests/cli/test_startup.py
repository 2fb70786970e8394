"""What a command loads before it does anything: `mailbag --help` (a fresh interpreter)
imports no broker SDK, no pydantic-heavy layer and no terminal or metrics library;
each command imports what it needs when it runs. A structural check, not a timing."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

#: top-level packages `mailbag --help` must not load
HEAVY = ("aio_pika", "aiormq", "boto3", "botocore", "rich", "prometheus_client", "pydantic", "yaml")


def loaded_by(*args: str) -> set[str]:
    """Top-level packages a fresh `python -m mailbag.cli ARGS` imported (`-X importtime`)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mailbag.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "mailbag" in names, result.stderr[-2000:]
    return names


def test_help_loads_no_broker_sdk_nor_heavy_library():
    loaded = loaded_by("--help")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize("command", ["publish", "worker", "dlq", "topology", "docs"])
def test_a_commands_help_loads_no_broker_sdk(command):
    loaded = loaded_by(command, "--help")
    assert not loaded & {"aio_pika", "aiormq", "boto3", "botocore"}, sorted(loaded)


def test_every_command_is_listed_and_each_registers_its_arguments():
    from mailbag.cli import COMMANDS, build_parser

    parser = build_parser()  # every command's arguments, as the container test reads them
    [subs] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(subs.choices) == list(COMMANDS)
    for name, sub in subs.choices.items():
        assert len(sub._actions) > 1, f"{name} registered no argument beyond --help"
    # given a command, the others are their name and help line only
    [subs] = [a for a in build_parser(["publish", "t", "x"])._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subs.choices["worker"]._actions) == 1 and len(subs.choices["publish"]._actions) > 1
