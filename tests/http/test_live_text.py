"""Output bytes -> the text of `output` events (pure), and the test's own SSE reader checked
against the standard's examples, so the end-to-end tests rest on a reader that is right."""

from __future__ import annotations

from runvisor.http.live_streams import TextEvents
from runvisor.http.output_follow import Piece
from tests.sse_spec import SseEvent, SseReader


def test_a_character_cut_by_a_piece_waits_for_its_rest() -> None:
    text = TextEvents(10)
    assert text.feed(Piece(10, b"ab\xf0\x9f")) == [("ab", 12)]  # the id is before the cut
    assert text.offset == 12
    assert text.feed(Piece(14, b"\x98\x80c")) == [("\U0001f600c", 17)]
    assert text.feed(Piece(17, b"\xe2")) == []  # nothing whole yet: no event
    assert text.finish() == [("\ufffd", 18)]  # the end: what is left is replaced


def test_invalid_bytes_are_replaced_and_a_gap_ends_a_cut_character() -> None:
    text = TextEvents(0)
    assert text.feed(Piece(0, b"x\xffy\xc3")) == [("x\ufffdy", 3)]
    # The rest of the character is not there (a gap in the stored output): it is replaced.
    assert text.feed(Piece(100, b"z")) == [("\ufffd", 4), ("z", 101)]


def test_the_reader_follows_the_standard() -> None:
    reader = SseReader()
    stream = (
        b"\xef\xbb\xbf: a comment\r\n"
        b"data: one\r\ndata:two\r\n\r\n"  # values joined with LF; one leading space stripped
        b"id: 7\revent: output\rdata:  spaced\r\r"  # lone CRs end lines
        b"data\n\n"  # a field with no colon: empty value
        b"id\n\n"  # an empty id resets the last event id; no data: nothing dispatched
        b"retry: 1500\ndata: x\n"  # not dispatched: no blank line yet
    )
    events: list[SseEvent] = []
    for i in range(len(stream)):  # a byte at a time: a CRLF split between two reads too
        events += reader.feed(stream[i : i + 1])
    assert events == [
        SseEvent("message", "one\ntwo", ""),
        SseEvent("output", " spaced", "7"),
        SseEvent("message", "", "7"),
    ]
    assert reader.last_event_id == "" and reader.retry_ms == 1500
    assert reader.comments == [" a comment"]
