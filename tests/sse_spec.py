"""An event-stream reader written to the WHATWG HTML standard (§9.2.6 "Interpreting an event
stream"), as a browser's EventSource reads one; the tests check the server against it, never
against the server's own code.

- the stream is UTF-8, decoded with invalid bytes replaced, one leading BOM dropped;
- a line ends at CRLF, at a lone LF, or at a lone CR;
- an empty line dispatches the event; a line starting with ':' is a comment;
- `field: value` (one leading space of the value stripped) or `field` alone (empty value);
- `data` values are joined with LF (the last LF removed at dispatch); an event with no data is
  not dispatched; `id` sets the last event id (kept across events) unless it holds a NUL;
  `event` sets the type (default `message`); `retry` sets the reconnection time if all digits.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True)
class SseEvent:
    type: str
    data: str
    last_event_id: str


class SseReader:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._started = False
        self._after_cr = False  # the last line ended at a CR: an LF right after belongs to it
        self._data: list[str] = []
        self._type = ""
        self._id_buffer = ""
        self.last_event_id = ""
        self.retry_ms: int | None = None
        self.comments: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events dispatched by this chunk of the stream."""
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        self._text += text
        events: list[SseEvent] = []
        while True:
            if self._after_cr and self._text.startswith("\n"):
                self._text = self._text[1:]
            if self._text:
                self._after_cr = False
            cut = _first_line_end(self._text)
            if cut is None:
                return events
            line, ending = self._text[:cut], self._text[cut]
            self._text = self._text[cut + 1 :]
            self._after_cr = ending == "\r"
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:])
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._type = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif field == "retry" and value and all("0" <= c <= "9" for c in value):
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        self.last_event_id = self._id_buffer
        if not self._data:
            self._type = ""
            return None
        event = SseEvent(self._type or "message", "\n".join(self._data), self.last_event_id)
        self._data, self._type = [], ""
        return event


def _first_line_end(text: str) -> int | None:
    cr, lf = text.find("\r"), text.find("\n")
    ends = [i for i in (cr, lf) if i >= 0]
    return min(ends) if ends else None
