"""The image work of one file, as a worker does it (never the daemon's main process).

* :mod:`~watchd.imaging.decode`: bytes to upright 8-bit pages, refusing what is not an image;
* :mod:`~watchd.imaging.sessions`: a worker's onnxruntime sessions, in one object;
* :mod:`~watchd.imaging.u2net`: U²-Net models run as rembg runs them, without rembg;
* :mod:`~watchd.imaging.cutout`: the cutout, the cutout on a colour, or the mask;
* :mod:`~watchd.imaging.encode` and :mod:`~watchd.imaging.png`: the output formats.

:mod:`watchd.pipeline` is the recipe that puts them together for one file.
"""
