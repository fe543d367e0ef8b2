"""The response side of the lean HTTP/1.1 exchange: a bounded, incremental parser.

``ResponseReader`` is the ``asyncio.Protocol`` of one probe's connection: it writes the
request when connected and parses the response as it arrives, in whatever pieces: a status
line, header fields (only Content-Length, Transfer-Encoding, Server and Content-Type are
kept), then a body framed by Content-Length, chunked encoding or the end of the connection,
kept up to ``BODY_LIMIT``. Anything that is not HTTP/1.x within the limits fails at once
with a ``ProbeError`` whose message is the reason an operator reads.

It accepts what RFC 9112 lets a recipient accept, as the aiohttp client it replaced did, so
that a healthy target is never called down for its line endings:

- a bare LF as a line terminator, anywhere CRLF is expected (§2.2);
- obs-fold, a header line continued on the next with leading SP or HTAB: the continuation
  is joined to the value with one SP (§5.2); whitespace lines before the first field are
  consumed (§2.2);
- whitespace between a field name and its colon, which a response parser removes (§5.1).
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Final, cast

from sutazai_agent.probes.base import BODY_LIMIT, HEADER_LINE_LIMIT, ProbeError, Reply, codec

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_HEADERS: Final = 128
"""Header fields accepted in one response (aiohttp's default)."""

HEAD_LIMIT: Final = 64 * 1024
"""Largest header section accepted (status line plus fields)."""


_NO_BODY_STATUSES: Final = frozenset({204, 304})
_TOKEN: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_HEAD_END: Final = re.compile(rb"\n\r?\n")
"""The empty line ending the header section, with CRLF or bare LF line endings."""
_OWS: Final = b" \t"


class ServerDisconnectedError(ProbeError):
    """The target closed the connection before a response arrived."""

    def __init__(self) -> None:
        super().__init__("server closed the connection without a response")


class InvalidResponseError(ProbeError):
    """What the target sent is not an HTTP/1.x response within our limits."""

    def __init__(self, why: str) -> None:
        super().__init__(f"invalid HTTP response: {why}")


class BodyBrokenOffError(ProbeError):
    """The connection closed before the body announced by the headers was complete."""

    def __init__(self) -> None:
        super().__init__("response body broken off")


class ResponseReader(asyncio.Protocol):
    """Writes the request on connect and parses the response as it arrives.

    The parser is a chain of steps (``self._step``): the header section, then one of
    Content-Length body, chunked body or body-until-close. A step consumes what it can from
    the buffer and returns whether it made progress.
    """

    def __init__(self, request: bytes, head: bool, done: asyncio.Future[Reply]) -> None:
        self._request = request
        self._head_request = head
        self._done = done
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the header section already searched for its end
        self._step: Callable[[], bool] = self._head
        self._remaining = 0  # body or chunk bytes still expected
        self._body = bytearray()
        self._status = 0
        self._server = ""
        self._charset: str | None = None
        self._complete = False  # the whole response was read, nothing is left on the wire

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        self._buffer += data
        try:
            while not self._done.done() and self._step():
                pass
        except ProbeError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._end_of_stream()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._fail(exc)
        self._end_of_stream()

    def abort(self) -> None:
        """Close the connection: politely after a complete response, at once otherwise."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._complete:
            transport.close()
        else:
            transport.abort()

    # --- the header section -------------------------------------------------------------
    def _head(self) -> bool:
        buffer = self._buffer
        if len(buffer) >= 5 and not buffer.startswith(b"HTTP/"):
            raise InvalidResponseError("not an HTTP/1.x status line")
        found = _HEAD_END.search(buffer, max(self._scanned - 3, 0))
        if found is None:
            self._check_partial_head()
            self._scanned = len(buffer)
            return False
        lines = [line.removesuffix(b"\r") for line in bytes(buffer[: found.start()]).split(b"\n")]
        del buffer[: found.end()]
        self._scanned = 0
        status = _status(lines[0])
        if len(lines) - 1 > MAX_HEADERS:
            raise InvalidResponseError(f"too many headers (more than {MAX_HEADERS})")
        length, chunked = self._fields(lines[1:])
        if 100 <= status < 200 and status != 101:
            return True  # an interim response: the final one follows
        self._status = status
        if self._head_request or status in _NO_BODY_STATUSES or status < 200:
            self._finish()
        elif chunked:
            self._step = self._chunk_size
        elif length is None:
            self._step = self._until_eof
        elif length == 0:
            self._finish()
        else:
            self._remaining = length
            self._step = self._sized
        return True

    def _fields(self, lines: list[bytes]) -> tuple[int | None, bool]:
        """Read the header fields a probe needs; returns (Content-Length, chunked)."""
        length: int | None = None
        chunked = False
        for key, value in _unfold(lines):
            if key == b"content-length":
                length = _content_length(value, length)
            elif key == b"transfer-encoding":
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif key == b"server":
                self._server = value.decode("latin-1")
            elif key == b"content-type":
                self._charset = _charset(value)
        return length, chunked

    def _check_partial_head(self) -> None:
        """Fail early on a header section that can only end badly (or never)."""
        buffer = self._buffer
        if len(buffer) > HEAD_LIMIT:
            raise InvalidResponseError(f"header section of more than {HEAD_LIMIT} bytes")
        if buffer.count(b"\n") > MAX_HEADERS + 1:
            raise InvalidResponseError(f"too many headers (more than {MAX_HEADERS})")
        if len(buffer) - (buffer.rfind(b"\n") + 1) > HEADER_LINE_LIMIT:
            raise InvalidResponseError(f"header line of more than {HEADER_LINE_LIMIT} bytes")
        first = buffer.find(b"\n")
        if first >= 0:
            _status(bytes(buffer[:first]).removesuffix(b"\r"))

    # --- the body -----------------------------------------------------------------------
    def _sized(self) -> bool:
        self._remaining -= self._take_body(self._remaining)
        if self._remaining == 0:
            self._finish()
        elif len(self._body) >= BODY_LIMIT:
            self._finish(truncated=True)
        return False

    def _until_eof(self) -> bool:
        self._take_body(len(self._buffer))
        if len(self._body) >= BODY_LIMIT:
            self._finish(truncated=True)
        return False

    def _chunk_size(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > HEADER_LINE_LIMIT:
                raise InvalidResponseError("chunk size line too long")
            return False
        digits = bytes(buffer[:end]).split(b";", 1)[0].strip(b" \t\r")
        del buffer[: end + 1]
        if not digits or len(digits) > 15 or not _HEX.issuperset(digits):
            raise InvalidResponseError(f"bad chunk size {digits[:20]!r}")
        self._remaining = int(digits, 16)
        self._step = self._chunk_data if self._remaining else self._trailers
        return True

    def _chunk_data(self) -> bool:
        self._remaining -= self._take_body(self._remaining)
        if len(self._body) >= BODY_LIMIT:
            self._finish(truncated=True)
            return False
        if self._remaining:
            return False
        self._step = self._chunk_end
        return True

    def _chunk_end(self) -> bool:
        buffer = self._buffer
        if buffer[:1] == b"\n":
            del buffer[:1]
        elif buffer[:2] == b"\r\n":
            del buffer[:2]
        elif not buffer or buffer == b"\r":
            return False
        else:
            raise InvalidResponseError("chunk not followed by CRLF")
        self._step = self._chunk_size
        return True

    def _trailers(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > HEADER_LINE_LIMIT:
                raise InvalidResponseError("trailer line too long")
            return False
        empty = end == 0 or (end == 1 and buffer[0] == 0x0D)
        del buffer[: end + 1]
        if empty:
            self._finish()
        return True

    def _take_body(self, wanted: int) -> int:
        """Move up to ``wanted`` buffered bytes into the body (kept to ``BODY_LIMIT``)."""
        buffer = self._buffer
        taken = min(wanted, len(buffer))
        room = BODY_LIMIT - len(self._body)
        if room > 0:
            self._body += buffer[: min(taken, room)]
        del buffer[:taken]
        return taken

    # --- outcomes -----------------------------------------------------------------------
    def _finish(self, *, truncated: bool = False) -> None:
        self._complete = not truncated and not self._buffer
        if not self._done.done():
            self._done.set_result(
                Reply(
                    status=self._status,
                    body=bytes(self._body),
                    server=self._server,
                    charset=codec(self._charset),
                )
            )

    def _fail(self, exc: BaseException) -> None:
        if not self._done.done():
            self._done.set_exception(exc)

    def _end_of_stream(self) -> None:
        if self._done.done():
            return
        if self._step == self._until_eof:
            self._finish()
        elif self._step != self._head:
            self._fail(BodyBrokenOffError())
        elif self._buffer:
            self._fail(InvalidResponseError("connection closed inside the header section"))
        else:
            self._fail(ServerDisconnectedError())


def _unfold(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(lower-case name, value) of each header field; obs-fold continuations are joined to
    the previous value with one SP, and whitespace before the colon is removed."""
    fields: list[tuple[bytes, bytes]] = []
    for line in lines:
        if len(line) > HEADER_LINE_LIMIT:
            raise InvalidResponseError(f"header line of more than {HEADER_LINE_LIMIT} bytes")
        if line[:1] in (b" ", b"\t"):
            if fields:  # obs-fold; before the first field, a whitespace line is ignored
                name, value = fields[-1]
                fields[-1] = (name, (value + b" " + line.strip(_OWS)).strip(_OWS))
            continue
        name, colon, raw = line.partition(b":")
        name = name.rstrip(_OWS)
        if not colon or not name or not _TOKEN.issuperset(name):
            raise InvalidResponseError("malformed header line")
        fields.append((name.lower(), raw.strip(_OWS)))
    return fields


def _status(line: bytes) -> int:
    """The status code of ``HTTP/1.x NNN reason``."""
    if len(line) > HEADER_LINE_LIMIT:
        raise InvalidResponseError(f"status line of more than {HEADER_LINE_LIMIT} bytes")
    parts = line.split(b" ", 2)
    if (
        len(parts) < 2
        or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
    ):
        raise InvalidResponseError("not an HTTP/1.x status line")
    status = int(parts[1])
    if status < 100:
        raise InvalidResponseError(f"status {status}")
    return status


def _content_length(value: bytes, seen: int | None) -> int:
    if not value.isdigit() or len(value) > 18:
        raise InvalidResponseError(f"bad Content-Length {value[:20]!r}")
    length = int(value)
    if seen is not None and seen != length:
        raise InvalidResponseError("conflicting Content-Length headers")
    return length


def _charset(content_type: bytes) -> str | None:
    for parameter in content_type.split(b";")[1:]:
        name, _, value = parameter.partition(b"=")
        if name.strip().lower() == b"charset":
            return value.strip().strip(b"\"'").decode("latin-1") or None
    return None
