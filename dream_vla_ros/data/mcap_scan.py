"""A minimal sequential MCAP reader for files that were never closed (no ROS imports).

A recorder killed with SIGKILL leaves an MCAP file without its summary and
footer, and a rosbag2 folder without metadata.yaml; regular readers (rosbags,
`ros2 bag`) refuse both. This scanner walks the records from the start, inside
uncompressed or zstd chunks, and stops cleanly at the first record that is cut
off, so everything written up to the last complete chunk is recovered.

Record layout (MCAP spec): magic `\\x89MCAP0\\r\\n`, then records of
`opcode:u8 length:u64 body`. Used opcodes: 0x03 schema, 0x04 channel,
0x05 message, 0x06 chunk.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"\x89MCAP0\r\n"
OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK, OP_FOOTER = 0x03, 0x04, 0x05, 0x06, 0x02


class McapScanError(ValueError):
    """The file is not MCAP at all, or a record is malformed (not merely cut off)."""


@dataclass(frozen=True)
class Schema:
    id: int
    name: str  # e.g. sensor_msgs/msg/Image
    encoding: str  # ros2msg | ros2idl
    data: bytes  # the message definition text


@dataclass(frozen=True)
class Channel:
    id: int
    schema_id: int
    topic: str
    message_encoding: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class Message:
    channel_id: int
    log_time_ns: int
    data: bytes


@dataclass
class ScanResult:
    schemas: dict[int, Schema] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    complete: bool = False  # a footer was reached: the file was closed properly
    truncated_at: int | None = None  # byte offset of the first cut-off record


class _Buf:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise EOFError
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> str:
        return bytes(self.take(self.u32())).decode("utf-8")

    def blob(self) -> bytes:
        return bytes(self.take(self.u32()))


def _decompress(compression: str, data: bytes, size: int) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    if compression == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(data))
    raise McapScanError(f"unsupported chunk compression '{compression}'")


def _records(buf: _Buf) -> Iterator[tuple[int, int, memoryview]]:
    """(offset, opcode, body) until the data ends; EOFError on a cut-off record."""
    while buf.pos < len(buf.data):
        start = buf.pos
        opcode = buf.u8()
        length = buf.u64()
        yield start, opcode, buf.take(length)


def _handle(opcode: int, body: memoryview, out: ScanResult) -> None:
    b = _Buf(body)
    if opcode == OP_SCHEMA:
        sid = b.u16()
        out.schemas[sid] = Schema(sid, b.string(), b.string(), b.blob())
    elif opcode == OP_CHANNEL:
        cid, sid, topic, enc = b.u16(), b.u16(), b.string(), b.string()
        meta: dict[str, str] = {}
        end = b.u32() + b.pos
        while b.pos < end:
            key = b.string()
            meta[key] = b.string()
        out.channels[cid] = Channel(cid, sid, topic, enc, meta)
    elif opcode == OP_MESSAGE:
        cid = b.u16()
        b.u32()  # sequence
        log_time = b.u64()
        b.u64()  # publish time
        out.messages.append(Message(cid, log_time, bytes(b.data[b.pos :])))


def scan(path: str | Path) -> ScanResult:
    """Every schema, channel and message that was completely written to `path`."""
    raw = Path(path).read_bytes()
    if not raw.startswith(MAGIC):
        raise McapScanError(f"{path} is not an MCAP file (bad magic bytes)")
    buf = _Buf(raw)
    buf.pos = len(MAGIC)
    out = ScanResult()
    offset = buf.pos
    try:
        for start, opcode, body in _records(buf):
            offset = start
            if opcode == OP_CHUNK:
                c = _Buf(body)
                c.u64(), c.u64()  # message start/end time
                size = c.u64()
                c.u32()  # crc
                compression = c.string()
                records = bytes(c.take(c.u64()))
                inner = _Buf(_decompress(compression, records, size))
                for _, inner_op, inner_body in _records(inner):
                    _handle(inner_op, inner_body, out)
            elif opcode == OP_FOOTER:
                out.complete = True
                break
            else:
                _handle(opcode, body, out)
    except EOFError:
        out.truncated_at = offset
    except (UnicodeDecodeError, struct.error) as exc:
        raise McapScanError(f"{path}: malformed record at byte {offset}: {exc}") from exc
    return out
