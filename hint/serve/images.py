"""Decoding a request's image for the model.

Images are decoded for the model, not for display: a JPEG is decoded at a reduced DCT scale
(``draft``), other formats at full size and then reduced (``Image.reduce``), to about ``work_size``
pixels per axis (twice the model's input); ``ExplainRequest.size`` keeps the size of the image as
displayed, the pixels boxes refer to. Truncated data is an error, also where a decoder would fill
the missing part quietly (a JPEG with an early end marker, a PNG whose compressed data stops early).
"""

from __future__ import annotations

import ctypes
import io
import re
import struct
import warnings
import zlib
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from hint._utils.text import one_line
from hint.serve.options import Limits, RequestError


class Decoded(NamedTuple):
    """A decoded request image."""

    image: Image.Image  # RGB, reduced for the model
    size: tuple[int, int]  # (width, height) as displayed: EXIF orientation applied, the pixels of boxes
    format: str  # PIL's name (JPEG, PNG ...)


def decode_image(raw: bytes, limits: Limits) -> Decoded:
    """Encoded bytes -> :class:`Decoded`; :class:`RequestError` (4xx) otherwise.

    Peak memory is bounded by ``limits.max_decode_pixels``: JPEGs are decoded at a reduced DCT scale,
    other formats at full size and refused above that many pixels.
    """
    if not raw:
        raise RequestError(400, "image is empty")
    if len(raw) > limits.max_bytes:
        raise RequestError(413, f"image is {len(raw)} bytes, over the {limits.max_bytes} byte limit")
    fmt = sniff(raw) or "image"
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated image is an error, never half an image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. corrupt EXIF: the pixels still decode
            return _decode(raw, limits)
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(413, f"{fmt} too large: over the {limits.max_pixels} pixel limit") from None
    except UnidentifiedImageError:
        if fmt != "image":
            raise RequestError(400, f"broken {fmt} file: its header cannot be read") from None
        raise RequestError(
            400, f"not a supported image (JPEG, PNG, WebP, BMP, GIF, TIFF); first bytes {bytes(raw[:16])!r}"
        ) from None
    except MemoryError:
        raise RequestError(413, f"{fmt} too large to decode") from None
    except Exception as e:  # noqa: BLE001 - any decoder error on client bytes is a client error
        raise RequestError(400, f"cannot decode {fmt}: {one_line(str(e)) or type(e).__name__}") from None


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip


def _formats(wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The wanted formats PIL has a plugin for (every plugin registered first: MPO, WebP ...)."""
    Image.init()
    return tuple(f for f in wanted if f in Image.OPEN)


def _decode(raw: bytes, limits: Limits) -> Decoded:
    formats = _formats(limits.formats)
    with Image.open(io.BytesIO(raw), formats=formats) as im:
        fmt = im.format or "image"
        w, h = im.size
        if w < 1 or h < 1:
            raise RequestError(400, f"{fmt} has zero size ({w}x{h})")
        if w * h > limits.max_pixels:
            raise RequestError(
                413, f"{fmt} is {w}x{h} = {w * h} pixels, over the {limits.max_pixels} pixel limit"
            )
        try:
            orientation = int(im.getexif().get(0x0112, 1))
        except Exception:  # noqa: BLE001 - a broken EXIF block: keep the pixels as stored
            orientation = 1
        im.seek(0)  # animated GIF/WebP/PNG, multi-page TIFF: the first frame
        draft = None
        if fmt in ("JPEG", "MPO") and min(w, h) >= 2 * limits.work_size:
            draft = (limits.work_size, limits.work_size)
            im.draft("RGB", draft)  # DCT scaling: 1/2, 1/4 or 1/8, still >= work_size per axis
        dw, dh = im.size
        if dw * dh > limits.max_decode_pixels:
            if draft:
                why = f"{fmt} is {w}x{h}: even decoded reduced ({dw}x{dh}) it is"
            else:
                why = f"{fmt} is {w}x{h} = {w * h} pixels,"
            raise RequestError(
                413,
                f"{why} over the {limits.max_decode_pixels} pixel limit for images decoded at full size "
                f"(JPEG is decoded reduced and may have up to {limits.max_pixels})",
            )
        if fmt == "PNG":
            _check_png(raw)
        im.load()
        if fmt in ("JPEG", "MPO"):
            _check_jpeg(raw, im, draft, formats)
        small = for_model(im, limits.work_size)
    if orientation in _TRANSPOSE:
        small = small.transpose(_TRANSPOSE[orientation])
        if orientation >= 5:
            w, h = h, w
    return Decoded(small, (w, h), fmt)


def for_model(im: Image.Image, work: int) -> Image.Image:
    """An image -> 8-bit RGB, reduced by whole factors per axis to no less than ``work`` pixels (the
    model squashes it to its input size anyway); transparent pixels composited on white."""
    from hint.backbones import to_rgb

    w, h = im.size
    fx, fy = max(1, w // work), max(1, h // work)
    if fx == fy == 1:
        return to_rgb(im)
    sixteen = im.mode.startswith("I;16")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif sixteen:
        im = im.convert("I")
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(im.mode)
    if premultiplied:  # average colours weighted by alpha
        straight = im.mode
        im = im.convert(premultiplied).reduce((fx, fy)).convert(straight)
    else:
        im = im.reduce((fx, fy))
    if sixteen:  # as to_rgb does for 16-bit images: 0..65535 -> 0..255
        a = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    return to_rgb(im)


_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker after entropy-coded data


#: bytes put in front of a JPEG's end marker to see whether the decoder still needs data (no 0xFF)
_PROBE = bytes((k * 73 + 41) % 255 for k in range(512))


def _jpeg_eoi(raw: bytes) -> int | None:
    """Where the first image's entropy-coded data ends before its EOI marker (fill bytes excluded),
    following the marker segments as libjpeg does; None when not found."""
    n, i = len(raw), 2
    while i + 1 < n:
        if raw[i] != 0xFF:  # garbage between segments: libjpeg skips to the next 0xFF
            j = raw.find(b"\xff", i)
            if j < 0:
                return None
            i = j
            continue
        m = raw[i + 1]
        if m == 0xFF:
            i += 1
        elif m == 0xD9:
            while i > 2 and raw[i - 1] == 0xFF:
                i -= 1
            return i
        elif 0xD0 <= m <= 0xD7 or m in (0x00, 0x01, 0xD8):
            i += 2
        else:
            if i + 4 > n:
                return None
            i += 2 + int.from_bytes(raw[i + 2 : i + 4], "big")
            if m == 0xDA:  # start of scan: entropy-coded data up to the next marker
                found = _MARKER.search(raw, i)
                if not found:
                    return None
                i = found.start()
    return None


def _check_jpeg(
    raw: bytes, decoded: Image.Image, draft: tuple[int, int] | None, formats: tuple[str, ...]
) -> None:
    """libjpeg fills the rest of a scan that ends early (an end marker right after a few bytes) with
    flat grey and only warns. Decode again with bytes put before the end marker: a complete image
    never reads them (same pixels); one that still needed data decodes them (other pixels)."""
    eoi = _jpeg_eoi(raw)
    if eoi is None:
        return  # no end marker where libjpeg would find one: the decoder itself reports truncation
    probe = raw[:eoi] + _PROBE + raw[eoi:]
    try:
        with Image.open(io.BytesIO(probe), formats=formats) as again:
            again.seek(0)
            if draft:
                again.draft("RGB", draft)
            again.load()
            same = (
                again.size == decoded.size
                and again.mode == decoded.mode
                and again.tobytes() == decoded.tobytes()
            )
    except Exception:  # noqa: BLE001 - the probe bytes broke the decoder: it was reading them
        same = False
    if not same:
        raise RequestError(400, "truncated JPEG: the image data ends before the image does")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_png(raw: bytes) -> None:
    """PIL accepts a PNG whose compressed data ends (cleanly) before the last row; count the rows."""
    data = memoryview(raw)
    pos, header, inflater, have, need, palette = 8, None, zlib.decompressobj(), 0, None, False
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR" and len(chunk) >= 13:
            header = struct.unpack(">IIBBBBB", chunk[:13])
            w, h, depth, color, _, _, interlace = header
            bits = _PNG_CHANNELS.get(color, 0) * depth
            if not bits:
                return  # PIL refuses it itself
            passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
            need = 0
            for x0, y0, dx, dy in passes:
                cols, rows = -(-(w - x0) // dx) if w > x0 else 0, -(-(h - y0) // dy) if h > y0 else 0
                if cols and rows:
                    need += rows * (1 + -(-(cols * bits) // 8))
        elif kind == b"PLTE":
            palette = True
        elif kind == b"IDAT" and need is not None:
            if header[3] == 3 and not palette:
                raise RequestError(400, "broken PNG: a palette image without a palette (PLTE)")
            try:
                buf = bytes(chunk)
                while buf and have < need:
                    have += len(inflater.decompress(buf, 1 << 20))
                    buf = inflater.unconsumed_tail
            except zlib.error as e:
                raise RequestError(400, f"broken PNG data ({e})") from None
            if have >= need or inflater.eof:
                break
        elif kind == b"IEND":
            break
    if need is not None and have < need:
        raise RequestError(400, f"truncated PNG: its image data stops after {have} of {need} bytes")


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)  # fmt: skip


def sniff(raw: bytes) -> str | None:
    """The image format the first bytes claim (JPEG, PNG, GIF, WEBP, BMP, TIFF), None otherwise."""
    head = bytes(raw[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


_libc: list = []


def release_memory() -> None:
    """Give freed decode buffers back to the system (glibc keeps freed heap memory otherwise)."""
    try:
        if not _libc:
            _libc.append(ctypes.CDLL("libc.so.6"))
        if _libc[0] is not None:
            _libc[0].malloc_trim(0)
    except (OSError, AttributeError):
        _libc[:] = [None]
