"""Files of the Batch API: a streamed multipart upload into stored parts, and reading files back a line at a time.

Nothing here holds a whole file: an upload is parsed as its pieces arrive (the gateway streams the HTTP body as
`google.api.HttpBody` messages) and written to the store one part (`PART_BYTES`) at a time; reading walks the parts.
So memory stays bounded by a part and the longest allowed line, whatever the file's size.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import multipart

from service import errors
from service.batches.records import FileRecord
from service.batches.store import BatchStore
from service.config import setting

PART_BYTES = 1024 * 1024
# Parts read at a time when a file is read back (4 MiB).
READ_PARTS = 4
MiB = 1024 * 1024
# The multipart envelope around the file (boundaries, headers, small fields) on top of the file's own cap.
ENVELOPE_BYTES = 64 * 1024
FORM_FIELD_BYTES = 1024
# OpenAI: batch files expire after 30 days unless told otherwise; expires_after.seconds is 1 hour to 30 days.
DEFAULT_EXPIRY_S = 30 * 24 * 3600
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 24 * 3600
OPENAI_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
FORM_FIELDS = ("file", "purpose", "expires_after[anchor]", "expires_after[seconds]")


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int = setting("batch_max_file_bytes")
    # An upload's lines: a batch's requests.
    max_lines: int = setting("batch_max_requests")
    max_line_bytes: int = 16 * MiB


def request_too_large(limit: int) -> errors.ApiError:
    """413 through the gateway (gateway/openai_errors.lua maps this reason to the status)."""
    return errors.ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"The file is too large: the Batch API takes files of up to {limit // MiB} MB.",
        "request_too_large",
    )


def _bad_upload(message: str, field: str | None = None, reason: str = "invalid_request") -> errors.ApiError:
    return errors.invalid_input(message, field=field, reason=reason)


@dataclass
class LineCounter:
    """Counts the non-blank lines of a byte stream and checks each against a size cap, as the bytes pass by."""

    max_lines: int
    max_line_bytes: int
    lines: int = 0
    # Bytes of the line not yet ended, and whether it holds anything but whitespace.
    _open_bytes: int = 0
    _open_blank: bool = True

    def feed(self, data: bytes) -> None:
        pieces = data.split(b"\n")
        for n, piece in enumerate(pieces):
            self._open_bytes += len(piece)
            if self._open_bytes > self.max_line_bytes:
                raise _bad_upload(
                    f"Line {self.lines + 1} of the file is longer than {self.max_line_bytes // MiB} MiB, the largest "
                    "request a batch line may hold.",
                    field="file",
                    reason="line_too_long",
                )
            if self._open_blank and piece.strip():
                self._open_blank = False
            if n < len(pieces) - 1:
                self._end_line()

    def _end_line(self) -> None:
        if not self._open_blank:
            self.lines += 1
            if self.lines > self.max_lines:
                raise _bad_upload(
                    f"The file holds more than {self.max_lines:,} requests, the most one batch may hold.",
                    field="file",
                    reason="too_many_tasks",
                )
        self._open_bytes, self._open_blank = 0, True

    def close(self) -> int:
        self._end_line()
        return self.lines


class PartWriter:
    """Appends bytes to a stored file one part at a time."""

    def __init__(self, store: BatchStore, file_id: str) -> None:
        self._store = store
        self.file_id = file_id
        self._buffer = bytearray()
        self._parts = 0
        self.size = 0

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        while len(self._buffer) >= PART_BYTES:
            await self._flush(bytes(self._buffer[:PART_BYTES]))
            del self._buffer[:PART_BYTES]

    async def close(self) -> None:
        if self._buffer:
            await self._flush(bytes(self._buffer))
            self._buffer.clear()

    async def _flush(self, data: bytes) -> None:
        await asyncio.to_thread(self._store.append_file_part, self.file_id, self._parts, data)
        self._parts += 1


@dataclass
class _Form:
    """What an upload said besides the file itself."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None


def _missing(name: str) -> errors.ApiError:
    return _bad_upload(f"Missing required parameter: '{name}'.", field=name, reason="missing_required_parameter")


def _boundary(content_type: str) -> str:
    kind, options = multipart.parse_options_header(content_type or "")
    if kind != "multipart/form-data" or not options.get("boundary"):
        raise _bad_upload(
            "Upload the file as multipart/form-data with the fields 'file' and 'purpose' "
            f"(got content type {content_type or 'none'!r}).",
        )
    return options["boundary"]


def _check_purpose(value: str) -> None:
    if value == "batch":
        return
    if value in OPENAI_PURPOSES:
        raise _bad_upload(
            f"This service stores files for the Batch API only: 'purpose' must be 'batch', not {value!r}.",
            field="purpose",
            reason="invalid_value",
        )
    raise _bad_upload(
        f"'{value}' is not one of {list(OPENAI_PURPOSES)} - 'purpose'.", field="purpose", reason="invalid_value"
    )


def _check_filename(filename: str) -> None:
    if not filename.lower().endswith(".jsonl"):
        message = "Invalid file format for Batch API. Must be .jsonl"
        raise _bad_upload(message, field="file", reason="invalid_file_format")


def expiry_seconds(anchor: str | None, seconds: str | int | None, field: str) -> int:
    """OpenAI's expires_after: anchor `created_at`, 3600 to 2592000 seconds; default 30 days."""
    if anchor is None and seconds is None:
        return DEFAULT_EXPIRY_S
    if anchor != "created_at":
        raise _bad_upload(f"'{field}[anchor]' must be 'created_at'.", field=f"{field}.anchor", reason="invalid_value")
    try:
        value = int(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = -1
    if not MIN_EXPIRY_S <= value <= MAX_EXPIRY_S:
        raise _bad_upload(
            f"'{field}[seconds]' must be between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}.",
            field=f"{field}.seconds",
            reason="invalid_value",
        )
    return value


class UploadReceiver:
    """One multipart upload, parsed as it streams in: small fields kept, the file written part by part."""

    def __init__(self, store: BatchStore, tenant: str, now: int, limits: UploadLimits) -> None:
        self._store = store
        self._tenant = tenant
        self._now = now
        self._limits = limits
        self._form = _Form()
        self._writer: PartWriter | None = None
        self._lines = LineCounter(limits.max_lines, limits.max_line_bytes)
        self._segment: Any = None
        self._value = bytearray()
        self._received = 0

    async def receive(self, messages: AsyncIterator[Any]) -> FileRecord:
        try:
            return await self._receive(messages)
        except BaseException:
            if self._writer is not None:
                await asyncio.to_thread(self._store.discard_file, self._writer.file_id)
            raise

    async def _receive(self, messages: AsyncIterator[Any]) -> FileRecord:
        parser: multipart.PushMultipartParser | None = None
        async for message in messages:
            if parser is None:
                parser = multipart.PushMultipartParser(
                    _boundary(message.content_type), max_header_size=4096, max_segment_count=len(FORM_FIELDS) + 1
                )
            self._received += len(message.data)
            if self._received > self._limits.max_file_bytes + ENVELOPE_BYTES:
                raise request_too_large(self._limits.max_file_bytes)
            await self._parse(parser, message.data)
        if parser is None:
            raise _bad_upload("The request has no body: upload the file as multipart/form-data.")
        await self._parse(parser, b"")
        if not parser.closed:
            raise _bad_upload("The multipart/form-data body ended before its closing boundary.")
        return await self._finish()

    async def _parse(self, parser: multipart.PushMultipartParser, data: bytes) -> None:
        try:
            events = list(parser.parse(data))
        except multipart.MultipartError as exc:
            raise _bad_upload(f"The multipart/form-data body is malformed: {exc}.") from None
        for event in events:
            if isinstance(event, multipart.MultipartSegment):
                await self._begin(event)
            elif event is None:
                self._end()
            elif self._segment.name == "file":
                await self._file_bytes(event)
            else:
                self._value += event
                if len(self._value) > FORM_FIELD_BYTES:
                    raise _bad_upload(f"The form field '{self._segment.name}' is too long.", field=self._segment.name)

    async def _begin(self, segment: multipart.MultipartSegment) -> None:
        if segment.name not in FORM_FIELDS:
            raise _bad_upload(f"Unrecognized request argument supplied: {segment.name}", field=segment.name)
        if segment.name in self._form.fields or (segment.name == "file" and self._writer is not None):
            raise _bad_upload(f"The form field '{segment.name}' is given twice.", field=segment.name)
        self._segment, self._value = segment, bytearray()
        if segment.name == "file":
            if segment.filename is None:
                raise _bad_upload("'file' must be a file (a form field with a filename).", field="file")
            _check_filename(segment.filename)
            self._form.filename = segment.filename
            file_id = await asyncio.to_thread(
                self._store.create_file, self._tenant, "batch", segment.filename, self._now
            )
            self._writer = PartWriter(self._store, file_id)

    def _end(self) -> None:
        name = self._segment.name
        if name != "file":
            try:
                value = bytes(self._value).decode()
            except UnicodeDecodeError:
                raise _bad_upload(f"The form field '{name}' is not UTF-8 text.", field=name) from None
            self._form.fields[name] = value
            if name == "purpose":
                _check_purpose(value)  # before the file's bytes, when the client sends the field first
        self._segment = None

    async def _file_bytes(self, data: bytes) -> None:
        assert self._writer is not None
        if self._writer.size + len(data) > self._limits.max_file_bytes:
            raise request_too_large(self._limits.max_file_bytes)
        self._lines.feed(data)
        await self._writer.write(data)

    async def _finish(self) -> FileRecord:
        fields = self._form.fields
        if "purpose" not in fields:
            raise _missing("purpose")
        if self._writer is None:
            raise _missing("file")
        seconds = expiry_seconds(
            fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]"), "expires_after"
        )
        lines = self._lines.close()
        await self._writer.close()
        return await asyncio.to_thread(
            self._store.finish_file, self._writer.file_id, self._writer.size, lines, self._now + seconds
        )


def iter_lines(store: BatchStore, file_id: str) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, bytes) of every non-blank line of a stored file, reading a few parts at a time.
    Blocking: run it in a thread. Lines are as long as uploads allow (`UploadLimits.max_line_bytes`)."""
    pending = b""
    number = 0
    first = 0
    while True:
        parts = store.file_parts(file_id, first, READ_PARTS)
        first += len(parts)
        if not parts:
            break
        pieces = (pending + b"".join(parts)).split(b"\n")
        pending = pieces.pop()
        for piece in pieces:
            number += 1
            if piece.strip():
                yield number, piece
        if len(parts) < READ_PARTS:
            break
    if pending.strip():
        yield number + 1, pending


async def stream_parts(store: BatchStore, file_id: str) -> AsyncIterator[bytes]:
    """A stored file's bytes, `READ_PARTS` parts at a time."""
    first = 0
    while True:
        parts = await asyncio.to_thread(store.file_parts, file_id, first, READ_PARTS)
        if not parts:
            return
        first += len(parts)
        yield b"".join(parts)
        if len(parts) < READ_PARTS:
            return
