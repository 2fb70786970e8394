"""A dead letter's text (reason, error, traceback) cut by bytes to the room an adapter
gives, and the pause of a message that could not be dead-lettered."""

import pytest

from mailbag.broker import headers as h
from mailbag.broker.backoff import FIRST_PAUSE, MAX_PAUSE, DeadLetterBackoff

MIXED = "aé€😀" * 50  # 1, 2, 3 and 4 bytes a character


@pytest.mark.parametrize("keep", ["head", "tail"])
def test_cut_keeps_whole_characters_within_the_room_and_says_what_went(keep):
    for room in range(0, 600):
        kept = h.cut(MIXED, room, keep=keep)
        assert len(kept.encode()) <= room or kept == MIXED
        if kept != MIXED and len(kept) > 40:
            cut_bytes = int(kept.split("[... ")[1].split(" bytes")[0])
            body = kept.replace(f" [... {cut_bytes} bytes cut ...] ", "")
            assert len(body.encode()) + cut_bytes == len(MIXED.encode())
            assert MIXED.startswith(body) if keep == "head" else MIXED.endswith(body)


def test_cut_leaves_text_that_fits_alone_and_carries_a_lone_surrogate_as_a_replacement():
    assert h.cut("short", 100) == "short"
    assert h.cut("bad \udc80" + "x" * 100, 60).startswith("bad ?x")


def _deep(n: int, text: str) -> None:
    if n:
        _deep(n - 1, text)
    raise ValueError(text)


@pytest.mark.parametrize("room", [h.DEAD_LETTER_TEXT_MAX, 10_000, 3_000, 0])
def test_a_stamp_of_a_huge_error_fits_its_room_with_the_error_head_and_the_last_frame(room):
    # Given an error of 2 MiB of non-ASCII text raised 50 frames deep
    text = "é" * 1_048_576
    try:
        _deep(50, text)
    except ValueError as exc:
        error = exc
    # When it is stamped for a dead letter within `room` bytes
    stamp = h.dead_letter_stamp("t", "q", 3, f"not retryable: ValueError: {text}", error, room)
    texts = [str(stamp[k]) for k in (h.DEAD_REASON, h.ERROR_MESSAGE, h.TRACEBACK)]
    # Then together they fit (never below the minimum), each keeps its head, the
    # traceback its last frame and the head of its exception line, and each says it was cut
    assert sum(len(t.encode()) for t in texts) <= max(room, h.DEAD_LETTER_TEXT_MIN)
    reason, message, traceback = texts
    assert reason.startswith("not retryable: ValueError: éé") and message.startswith("éé")
    assert "in _deep\n" in traceback and "ValueError: é" in traceback
    assert all("bytes cut" in t for t in texts)
    assert stamp[h.ERROR_TYPE] == "ValueError"


def test_a_stamp_that_fits_is_whole():
    try:
        _deep(2, "card refused")
    except ValueError as exc:
        stamp = h.dead_letter_stamp("t", "q", 1, "not retryable: ValueError: card refused", exc)
    assert stamp[h.ERROR_MESSAGE] == "card refused"
    assert str(stamp[h.TRACEBACK]).startswith("Traceback") and str(stamp[h.TRACEBACK]).endswith(
        "ValueError: card refused\n"
    )


def test_the_pause_doubles_per_failure_up_to_the_cap_and_a_settlement_ends_the_streak():
    returns = DeadLetterBackoff()
    pauses = [returns.failed("q", "m1") for _ in range(9)]
    assert pauses == [FIRST_PAUSE * 2**i for i in range(6)] + [MAX_PAUSE] * 3
    assert returns.failed("other-q", "m1") == FIRST_PAUSE  # a streak per queue
    returns.settled("q", "m1")
    assert returns.failed("q", "m1") == FIRST_PAUSE
    for _ in range(2000):
        returns.failed("q", "m2")
    assert returns.failed("q", "m2") == MAX_PAUSE  # no overflow however long the streak
