"""Every file a command writes (`topology export -o`, `docs --out`, `dlq export --out`,
`publish --ids-out`, the `compare` report) goes through one helper
(`mailbag.broker.files.write_file`): a regular file or standard output only, never a
device, FIFO, socket or directory, and a symbolic link only when asked; written whole,
readable (0644 under the usual umask), keeping an existing file's mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mailbag.broker import Message, Queue, Topology
from mailbag.broker.files import OutputPathError, write_file
from mailbag.broker.memory import open_broker
from mailbag.dlq import DeadLetters
from mailbag.harness.report import data
from mailbag.harness.result import Report

APP = "mailbag.examples.orders.app:app"


def mailbag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailbag.cli", *args], capture_output=True, text=True, timeout=60, cwd="/"
    )


def export_to(path: object, *more: str) -> subprocess.CompletedProcess:
    return mailbag("topology", "export", APP, "--format", "cloudformation", "-o", str(path), *more)


def refused(result: subprocess.CompletedProcess, says: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_dev_null_stays_a_device():
    before = os.stat("/dev/null")
    refused(export_to("/dev/null"), "/dev/null is a character device, not a regular file")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


def test_a_fifo_and_a_directory_are_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused(export_to(fifo), "is a FIFO, not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    refused(export_to(tmp_path), "is a directory")
    refused(mailbag("docs", APP, "--out", str(fifo)), "is a FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlink_is_written_through_only_when_asked(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    # Given a link: refused, and neither the link nor its target changes
    refused(export_to(link), "is a symbolic link")
    assert link.is_symlink() and target.read_text() == "old"
    # When asked, the target is written and the link stays a link
    result = export_to(link, "--follow-symlinks")
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and '"AWSTemplateFormatVersion"' in target.read_text()


def test_a_new_file_is_readable_and_an_existing_one_keeps_its_mode(tmp_path):
    old_umask = os.umask(0o022)
    try:
        out = tmp_path / "template.json"
        assert export_to(out).returncode == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        out.chmod(0o600)
        assert export_to(out).returncode == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)
    assert not [p for p in tmp_path.iterdir() if p.name != "template.json"]  # no temporary file left


def test_dash_is_standard_output():
    result = mailbag("topology", "export", APP, "--format", "cloudformation", "-o", "-")
    assert result.returncode == 0 and result.stdout.startswith("{"), result.stderr
    result = mailbag("docs", APP, "--out", "-")
    assert result.returncode == 0 and "asyncapi" in result.stdout, result.stderr


def test_a_missing_folder_is_one_line(tmp_path):
    refused(export_to(tmp_path / "nowhere" / "t.json"), "does not exist")


async def test_dead_letter_export_refuses_a_device_and_writes_a_file(tmp_path):
    broker = await open_broker("memory://")
    try:
        await broker.declare(Topology(queues=(Queue("jobs", ("jobs",)),)))
        await broker.send("jobs.dlq", [Message("jobs", b"{}")])
        dead = DeadLetters(broker, "jobs")
        with pytest.raises(OutputPathError, match="character device"):
            await dead.export("/dev/null")
        link = tmp_path / "link.jsonl"
        link.symlink_to(tmp_path / "dead.jsonl")
        with pytest.raises(OutputPathError, match="symbolic link"):
            await dead.export(link)
        assert await dead.export(link, follow_symlinks=True) == 1
        assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == 1
    finally:
        await broker.close()


def test_the_compare_report_files_go_through_the_same_checks(tmp_path):
    (tmp_path / data.FILE).symlink_to("/dev/null")
    with pytest.raises(OutputPathError, match="symbolic link"):
        data.save(Report(started="now", settings={}, brokers=[]), tmp_path / data.FILE)
    assert os.path.islink(tmp_path / data.FILE)


def test_bytes_and_text_are_written_whole(tmp_path):
    assert write_file(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    write_file(Path(tmp_path / "a.txt"), "é")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "é"
