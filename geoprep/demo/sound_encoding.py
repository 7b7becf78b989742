"""MP3 and Ogg Vorbis encoding of demo recordings, byte-for-byte reproducible.

Encoding uses libsndfile (through soundfile), which writes MPEG layer III and Ogg Vorbis. MP3
output is byte-for-byte deterministic; Ogg output is not, because libsndfile gives each stream
a random serial number, so :func:`encode` rewrites the serial (and the page checksums) to a
fixed value.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import TYPE_CHECKING

import soundfile

if TYPE_CHECKING:
    from geoprep.demo.sounds import Recording

#: Container formats :func:`encode` writes, with their libsndfile format and subtype.
FORMATS = {"mp3": ("MP3", "MPEG_LAYER_III"), "ogg": ("OGG", "VORBIS")}
#: libsndfile's compression level (0 best quality .. 1 smallest); keeps the world small.
COMPRESSION_LEVEL = 0.9
_WRITE_FRAMES = 1 << 16


def encode(recording: Recording, fmt: str, serial: int = 1) -> bytes:
    """The recording as an ``"mp3"`` (VBR) or ``"ogg"`` (Vorbis) file; same input, same bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; expected one of {sorted(FORMATS)}")
    container, subtype = FORMATS[fmt]
    options = {"bitrate_mode": "VARIABLE"} if fmt == "mp3" else {}
    buffer = io.BytesIO()
    with soundfile.SoundFile(
        buffer,
        "w",
        recording.sample_rate,
        recording.channels,
        format=container,
        subtype=subtype,
        compression_level=COMPRESSION_LEVEL,
        **options,
    ) as sink:
        # libsndfile 1.2's Vorbis writer crashes on a single write of ~2 million frames or more
        for start in range(0, len(recording.samples), _WRITE_FRAMES):
            sink.write(recording.samples[start : start + _WRITE_FRAMES])
    data = buffer.getvalue()
    return set_ogg_serial(data, serial) if fmt == "ogg" else data


_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_page_crc(page: bytes) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, not reflected, init 0, no xor-out).

    zlib computes the reflected form of the same polynomial; feeding it bit-reversed bytes and
    bit-reversing the result gives the unreflected checksum at C speed.
    """
    reflected = zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def set_ogg_serial(data: bytes, serial: int) -> bytes:
    """``data`` (a single-stream Ogg file) with every page's serial number set to ``serial``."""
    out = bytearray(data)
    position = 0
    while position < len(out):
        if out[position : position + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {position}")
        n_segments = out[position + 26]
        body = sum(out[position + 27 : position + 27 + n_segments])
        end = position + 27 + n_segments + body
        out[position + 14 : position + 18] = struct.pack("<I", serial & 0xFFFFFFFF)
        out[position + 22 : position + 26] = b"\0\0\0\0"
        crc = ogg_page_crc(bytes(out[position:end]))
        out[position + 22 : position + 26] = struct.pack("<I", crc)
        position = end
    return bytes(out)
