import threading

import numpy as np
import pytest

from streamer.serve.board import PREVIEW_MAX_SIDE, FrameBoard, JpegEncoder, preview_size

from mjpeg_client import decode_jpeg


def gradient(height: int, width: int, shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x + shift) % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(255 ** 2 / mse))


def test_board_keeps_only_the_latest_and_counts_versions():
    board = FrameBoard()
    assert board.latest() is None and board.version == 0
    a, b = gradient(4, 4), gradient(4, 4, 1)
    board.post(0, a, b)
    board.post(1, b, a)
    latest = board.latest()
    assert (latest.version, latest.index) == (2, 1)
    assert latest.picture("input") is b and latest.picture("restored") is a   # references, not copies
    with pytest.raises(ValueError):
        latest.picture("other")


def test_listeners_hear_every_post_on_the_posting_thread():
    board, heard = FrameBoard(), []
    board.listen(lambda: heard.append(threading.current_thread().name))
    worker = threading.Thread(target=lambda: [board.post(i, gradient(2, 2), gradient(2, 2)) for i in range(3)],
                              name="writer")
    worker.start()
    worker.join()
    assert heard == ["writer"] * 3


@pytest.mark.parametrize("size, shown", [((360, 640), (360, 640)), ((241, 321), (240, 320)),
                                         ((2160, 3840), (1080, 1920)), ((4320, 7680), (1080, 1920))])
def test_preview_size_halves_until_it_fits(size, shown):
    assert preview_size(*size) == shown
    assert max(shown) <= PREVIEW_MAX_SIDE


def test_jpeg_is_the_picture():
    picture = gradient(120, 160)
    encoder = JpegEncoder(120, 160)
    first, second = encoder.encode(picture), encoder.encode(picture)
    assert encoder.encoded == 2
    decoded = decode_jpeg(first)
    assert decoded.shape == picture.shape
    assert psnr(decoded, picture) > 28
    assert decode_jpeg(second).shape == picture.shape


def test_odd_sized_pictures_are_shown_at_an_even_size():
    encoder = JpegEncoder(61, 81)
    assert decode_jpeg(encoder.encode(gradient(61, 81))).shape == (60, 80, 3)


def test_encoder_refuses_another_size():
    with pytest.raises(ValueError, match="encoder was made for"):
        JpegEncoder(16, 16).encode(gradient(16, 32))


def test_sixteen_bit_pictures_are_shown_too():
    """A high-bit-depth input's frames are uint16 RGB: shown at JPEG's 8 bits."""
    picture = gradient(64, 96)
    decoded = decode_jpeg(JpegEncoder(64, 96).encode(picture.astype(np.uint16) * 257))
    assert psnr(decoded, picture) > 28
