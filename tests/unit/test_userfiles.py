"""The one reader's decoding and naming rules, on bytes in memory (no store)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from mnist_tasks import userfiles
from mnist_tasks.idx import encode_idx
from mnist_tasks.userfiles import UserFileError, decode_idx_images, decode_png, is_skipped_name
from tests.helpers import png

URI = "file:///landing/b1/x.png"


def header_only(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body
            + struct.pack(">I", zlib.crc32(body)))


@pytest.mark.parametrize(("name", "skipped"), [
    (".DS_Store", True), ("._ok.png", True), (".part-1", True), ("_SUCCESS", True),
    ("_SUCCESS.crc", True), ("_temporary", True), ("Thumbs.db", True), ("desktop.ini", True),
    ("_x.png", False), ("-x.png", False), ("photo 1.png", False), ("été.png", False),
    ("x#1.png", False), ("SUCCESS", False),
])
def test_hidden_and_marker_names_are_skipped_and_ordinary_names_are_not(
    name: str, skipped: bool
) -> None:
    assert is_skipped_name(name) is skipped


def test_modes_of_8_bits_convert_to_the_same_gray() -> None:
    gray = (np.arange(784) % 256).astype(np.uint8).reshape(28, 28)
    assert np.array_equal(decode_png(png(gray), URI), gray)
    assert np.array_equal(decode_png(png(np.stack([gray] * 3, -1)), URI), gray)
    assert np.array_equal(decode_png(png(np.dstack([gray, gray])), URI), gray)  # gray+alpha


@pytest.mark.parametrize(("data", "message"), [
    (header_only(30_000, 30_000), r"x\.png: PNG is 30000x30000, expected 28x28"),
    (header_only(28, 28, depth=16), r"x\.png: 16-bit grayscale PNG is not supported"),
    (header_only(28, 28, depth=16, colour=2), r"x\.png: 16-bit RGB PNG is not supported"),
    (header_only(28, 28, colour=5), r"x\.png: unreadable PNG \(unknown colour type 5\)"),
    (header_only(28, 28)[:-1] + b"\0", r"x\.png: unreadable PNG \(the header's checksum"),
    (b"GIF89a" + bytes(40), r"x\.png: unreadable PNG \(no PNG signature"),
    (b"", r"x\.png: unreadable PNG \(no PNG signature"),
])
def test_the_header_is_refused_before_any_pixel_is_decoded(data: bytes, message: str) -> None:
    with pytest.raises(UserFileError, match=message):
        decode_png(data, URI)


def test_decoder_errors_are_named_without_memory_addresses() -> None:
    good = png(np.zeros((28, 28), dtype=np.uint8))
    for broken in (good[:45], good[:-5], good[:37] + b"\xff" * 8 + good[45:]):
        with pytest.raises(UserFileError) as info:
            decode_png(broken, URI)
        assert str(info.value).startswith(f"{URI}: unreadable PNG (")
        assert " at 0x" not in str(info.value)


def test_idx_images_are_bounded_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.zeros((3, 28, 28), dtype=np.uint8)
    assert decode_idx_images(encode_idx(x), URI).shape == (3, 28, 28)
    with pytest.raises(UserFileError, match="holds no images"):
        decode_idx_images(encode_idx(x[:0]), URI)
    with pytest.raises(UserFileError, match="images are 27x28, expected 28x28"):
        decode_idx_images(encode_idx(np.zeros((3, 27, 28), dtype=np.uint8)), URI)
    monkeypatch.setattr(userfiles, "_MAX_IMAGES_PAYLOAD", 16 + 2 * 784)
    with pytest.raises(UserFileError, match="larger than"):
        decode_idx_images(encode_idx(x), URI)
