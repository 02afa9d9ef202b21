"""U²-Net models run on onnxruntime directly: rembg's exact steps, without importing rembg.

Why: importing rembg in a worker costs seconds and a lot of memory (it brings pymatting,
numba, scipy and scikit-image, for alpha matting), which is what kept a worker above
the memory target on 12 MP photos (docs/performance.md). The U²-Net family (``u2net``,
``u2netp``, ``u2net_human_seg``, ``silueta``) and models imported with
``watchd models import`` (rembg's ``u2net_custom``) share one set of steps, written
out here from rembg 2.0's ``U2netpSession.predict`` and ``naive_cutout``;
tests/test_u2net.py compares the results with rembg's own, pixel for pixel, on real
photos, so a rembg release that changes them is noticed.

Other model families (isnet, birefnet, ...), alpha matting and mask post-processing
still go through rembg (imported on first use, see watchd/imaging/cutout.py). A
:class:`U2netSession` has rembg's ``predict`` method, so rembg's ``remove`` accepts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: rembg's built-in models of this family; imported custom models are U²-Nets too.
FAMILY = frozenset({"u2net", "u2netp", "u2net_human_seg", "silueta"})

#: The model's input: a 320x320 RGB image normalised with ImageNet's mean and std.
SIZE = (320, 320)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

#: Pillow's image memory block size in a worker. Pillow stores an image in blocks of
#: 16 MiB by default; an image held in one block can be relabelled without a copy
#: (:func:`naive_cutout`). 1 GiB holds the largest image a worker accepts (Pillow's
#: decompression-bomb limit of about 89 million pixels, 358 MiB as RGBA); Pillow
#: allocates only what an image needs, so smaller images cost no more.
PILLOW_BLOCK_SIZE = 1 << 30


class U2netSession:
    """One onnxruntime session of a U²-Net model, with rembg's session interface.

    ``inner_session`` is named as in rembg, where watchd reads the execution provider.
    """

    def __init__(self, model_path: Path, options: Any, providers: list[str]) -> None:
        import onnxruntime as ort

        self.inner_session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=providers
        )
        self._input = self.inner_session.get_inputs()[0].name
        # Only the first of the model's seven outputs is used (the fused map; the others
        # are its side outputs): asking for it alone gives the same numbers.
        self._output = self.inner_session.get_outputs()[0].name

    def predict(self, img: Image.Image, *_args: Any, **_kwargs: Any) -> list[Image.Image]:
        """rembg's interface: the list of masks (one) for ``img``."""
        return [self.mask(img)]

    def model_input(self, img: Image.Image) -> Any:
        """rembg's ``normalize``: LANCZOS to 320x320, scaled by the brightest value, then
        ImageNet's mean and std, in float64 as rembg computes it, as a 1x3x320x320 float32.

        The arithmetic is rembg's, so the input is the same to the bit; only copies rembg
        makes and does not need are left out.
        """
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        small = np.asarray(rgb.resize(SIZE, Image.Resampling.LANCZOS))
        scaled = small / max(np.max(small), 1e-6)
        normalised = (scaled - np.array(MEAN)) / np.array(STD)
        return np.expand_dims(normalised.transpose((2, 0, 1)), 0).astype(np.float32)

    def mask(self, img: Image.Image) -> Image.Image:
        """The "L" mask of ``img``, at its size: rembg's ``predict`` (min-max scaled, 8 bits,
        LANCZOS back up)."""
        feed = {self._input: self.model_input(img)}
        pred = self.inner_session.run([self._output], feed)[0][:, 0, :, :]
        high, low = np.max(pred), np.min(pred)
        pred = np.squeeze((pred - low) / (high - low))
        mask = Image.fromarray((pred * 255).astype("uint8"))
        return mask.resize(img.size, Image.Resampling.LANCZOS)


def naive_cutout(image: Image.Image, mask: Image.Image) -> Image.Image:
    """rembg's ``naive_cutout``, bit for bit, in about half the time on an RGB photo.

    rembg composites the photo through the mask onto transparent black: each colour
    becomes ``colour * mask / 255`` (rounded as Pillow rounds) and the mask becomes the
    alpha. That is exactly what Pillow's premultiplied mode "RGBa" stores for the photo
    with the mask as its alpha, so that conversion makes the same bytes, which are then
    labelled "RGBA" again, without a copy when Pillow holds the image in one block
    (:data:`PILLOW_BLOCK_SIZE`). An RGBA photo's own alpha is multiplied by the mask in
    rembg's composite, which "RGBa" does not do: such photos take rembg's way.
    """
    if image.mode != "RGB":
        return Image.composite(image, Image.new("RGBA", image.size, 0), mask)
    straight = image.convert("RGBA")
    straight.putalpha(mask)
    premultiplied = straight.convert("RGBa")
    del straight
    try:
        return Image.fromarrow(premultiplied, "RGBA", premultiplied.size)
    except ValueError:  # held in several blocks: relabel through a copy
        return Image.frombytes("RGBA", premultiplied.size, premultiplied.tobytes())
