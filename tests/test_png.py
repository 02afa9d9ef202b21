"""The PNG encoder: lossless in every mode, metadata as Pillow writes it, readable everywhere."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from watchd.imaging.png import encode_png


def _photo(mode: str) -> Image.Image:
    from skimage import data

    rgb = Image.fromarray(data.astronaut()).resize((301, 199))  # odd sizes: no lucky strides
    if mode == "RGB":
        return rgb
    if mode == "L":
        return rgb.convert("L")
    alpha = Image.linear_gradient("L").resize(rgb.size)
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    return rgba


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "L"])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_pixels_are_identical_at_every_level(mode: str, level: int) -> None:
    image = _photo(mode)
    with Image.open(io.BytesIO(encode_png(image, level))) as back:
        assert back.format == "PNG" and back.mode == mode and back.size == image.size
        assert np.array_equal(np.asarray(back), np.asarray(image))


def test_profile_and_resolution_read_back_as_pillow_writes_them() -> None:
    image = _photo("RGBA")
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    ours = encode_png(image, 1, icc_profile=profile, dpi=(300, 299.5))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", icc_profile=profile, dpi=(300, 299.5))
    with Image.open(io.BytesIO(ours)) as back, Image.open(buffer) as pillows:
        assert back.info["icc_profile"] == profile == pillows.info["icc_profile"]
        assert back.info["dpi"] == pillows.info["dpi"]
        assert np.array_equal(np.asarray(back), np.asarray(image))
    with Image.open(io.BytesIO(ours)) as again:
        again.verify()  # every chunk's CRC checks out


def test_every_chunk_is_well_formed_and_metadata_precedes_the_image_data() -> None:
    data = encode_png(_photo("RGB"), 1, icc_profile=b"not really a profile", dpi=(72, 72))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = []
    offset = 8
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        crc = int.from_bytes(data[offset + 8 + length : offset + 12 + length], "big")
        assert crc == zlib.crc32(kind + body), kind
        kinds.append(kind)
        offset += 12 + length
    assert offset == len(data)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert kinds.index(b"iCCP") < kinds.index(b"IDAT") and kinds.index(b"pHYs") < kinds.index(
        b"IDAT"
    )


def test_without_metadata_nothing_is_added() -> None:
    with Image.open(io.BytesIO(encode_png(_photo("L"), 1))) as back:
        assert "icc_profile" not in back.info and "dpi" not in back.info


def test_other_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="mode P"):
        encode_png(Image.new("P", (4, 4)), 1)
