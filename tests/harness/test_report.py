"""The reports: JSON that round-trips, charts that are real PNGs, an index.md that
embeds them, and a terminal table that shouts about loss."""

import json

from rich.console import Console

from mailbag.harness import SCENARIOS, Faults, FaultyBroker, Target, compare
from mailbag.harness.report import data, render, write
from tests.harness.conftest import FAST


async def lossy_report():
    return await compare(
        [Target.parse("memory://"), Target.parse("memory://?ordered=1")],
        settings=FAST,
        wrap=lambda broker, target: FaultyBroker(broker, Faults(drop=0.1, seed=1)),
    )


async def test_every_file_is_written_and_index_embeds_every_chart(tmp_path):
    # Given a run on two memory variants in which messages were lost
    report = await lossy_report()
    # When the report is written
    written = write(report, tmp_path)
    # Then the JSON round-trips, every chart is a PNG and index.md embeds them all
    names = {p.name for p in written}
    assert {
        "results.json",
        "index.md",
        "latency.png",
        "ordering.png",
        "redelivery.png",
        "crash.png",
        "throughput.png",
    } <= names
    again = data.load(tmp_path / "results.json")
    assert again.to_dict() == json.loads(json.dumps(report.to_dict()))
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (tmp_path / "index.md").read_text()
    for png in tmp_path.glob("*.png"):
        assert f"]({png.name})" in index
    assert "**FAIL**" in index and "LOST" in index
    assert {r["scenario"] for r in again.to_dict()["results"]} == set(SCENARIOS)


async def test_the_table_repeats_every_loss_below_it():
    report = await lossy_report()
    console = Console(width=240, record=True)
    console.print(render(report))
    text = console.export_text()
    assert "MESSAGES LOST OR SCENARIOS FAILED" in text
    assert text.count("LOST") >= sum(1 for r in report.results if r.lost)
    assert report.failed


async def test_an_unreachable_broker_is_an_error_row_not_a_crash():
    report = await compare([Target.parse("amqp://guest:pw@127.0.0.1:1/")], ["latency"], FAST)
    [result] = report.results
    assert result.verdict == "ERROR" and result.error
    assert "pw@" not in result.error
