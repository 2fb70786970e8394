"""What moto does with a FIFO queue under concurrent long polls, with plain boto3 and no
mailbag code: it hands several messages of one message group out at once (it reads which
groups are in flight without a lock), which SQS never does. This is where the per-key
order violations on SQS FIFO with competing consumers in docs/comparison come from."""

import threading
import uuid

import boto3

from tests.moto_server import REGION, dummy_aws_credentials

POLLERS = 8
ROUNDS = 10


def one_round(endpoint: str, url: str) -> list[str]:
    """`POLLERS` threads long-poll at once while a batch of one group arrives; returns
    the bodies they received, none deleted yet: what was in flight at the same time."""
    got: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(POLLERS + 1)

    def poll() -> None:
        client = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
        start.wait()
        reply = client.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=3)
        with lock:
            got.extend(m["Body"] for m in reply.get("Messages", []))

    threads = [threading.Thread(target=poll) for _ in range(POLLERS)]
    for t in threads:
        t.start()
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    start.wait()
    sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": str(i), "MessageBody": str(i), "MessageGroupId": "g", "MessageDeduplicationId": uuid.uuid4().hex}
            for i in range(POLLERS)
        ],
    )
    for t in threads:
        t.join()
    return got


def test_moto_hands_out_several_messages_of_one_fifo_group_at_once(moto_server):
    with dummy_aws_credentials():
        sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_server)
        url = sqs.create_queue(QueueName=f"m{uuid.uuid4().hex[:8]}.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
        try:
            at_once = []
            for _ in range(ROUNDS):
                at_once.append(len(one_round(moto_server, url)))
                if at_once[-1] > 1:
                    break
                sqs.purge_queue(QueueUrl=url)
        finally:
            sqs.delete_queue(QueueUrl=url)
    # SQS would give the group's messages one at a time (the next only once the one in flight is deleted)
    assert max(at_once) > 1, f"moto kept the group to one message in flight in {ROUNDS} rounds: {at_once}"
