"""`mailbag worker` says what it does when all goes well: a "handled N, retried N,
dead-lettered N" line every `--summary-every` seconds in which counts changed, and
with `-v` one INFO line per message handled. Run as an operator runs it: a worker
process on the real RabbitMQ."""

from __future__ import annotations

import logging
from pathlib import Path

from mailbag.broker import Delivery, Message
from mailbag.broker.rabbitmq import open_broker
from mailbag.cli.worker import Tally
from tests.conformance.env import eventually
from tests.names import run_name
from tests.observability import obs_app, running_worker, stopped
from tests.rabbitmq.service import amqp_url, remove_declared

ROOT = Path(__file__).resolve().parents[2]


async def test_worker_logs_a_summary_and_with_v_each_handled_message(tmp_path):
    run = run_name("tally")
    broker = await open_broker(amqp_url())
    log_path = tmp_path / "worker.log"
    try:
        await broker.declare(obs_app.build(run).topology)
        # Given a worker with -v and a short summary period
        with (
            log_path.open("w") as log_file,
            running_worker(run, "-v", "--summary-every", "0.2", stderr=log_file) as proc,
        ):
            # When one message succeeds, one fails its first attempt, one is poison
            topic = obs_app.topic(run)
            ok, flaky = Message(topic, b'{"n": 1}'), Message(topic, b'{"fail_first": true}')
            await broker.publish(topic, [ok, flaky, Message(topic, b"not json")])

            async def summed_up() -> bool:
                return "handled 2, retried 1, dead-lettered 1" in log_path.read_text()

            # Then the summary line says so
            await eventually(summed_up, timeout=60, what="the summary line")
            assert await stopped(proc) == 0
        lines = log_path.read_text().splitlines()
        # and -v gave one INFO line per handled message, with its id and queue
        handled = [line for line in lines if " INFO mailbag.worker handled message_id=" in line]
        assert len(handled) == 2, lines
        for message in (ok, flaky):
            assert any(f"message_id={message.id}" in line and f"queue={topic}" in line for line in handled)
        # and the summary is said once per change, not every period
        summaries = [line for line in lines if "handled 2, retried 1, dead-lettered 1" in line]
        assert len(summaries) == 1, summaries
    finally:
        await broker.close()
        await remove_declared(broker)


def test_the_tally_formats_nothing_per_message_without_verbose(caplog):
    delivery = Delivery(Message("t", b"{}"), "q", 1)
    with caplog.at_level(logging.DEBUG, logger="mailbag.worker"):
        quiet = Tally()
        for _ in range(3):
            quiet.count("handled", delivery)
        quiet.count("postponed", delivery)
        assert caplog.records == []
        assert quiet.summary() == "handled 3, retried 0, dead-lettered 0, postponed 1"
        quiet.say_if_changed()
        quiet.say_if_changed()  # nothing new: said once
        assert [r.getMessage() for r in caplog.records] == [quiet.summary()]
        Tally(verbose=True).count("handled", delivery)
        assert caplog.records[-1].getMessage() == "handled" and caplog.records[-1].queue == "q"
