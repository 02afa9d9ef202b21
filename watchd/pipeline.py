"""The recipe for one file in a worker: decode each page, remove its background, encode it.

One concern: the order of the steps, their timings and the limits on what one file may
make. The steps themselves are in :mod:`watchd.imaging`; where this runs (a local
process, a Dask worker) is :mod:`watchd.pool`'s business.
"""

from __future__ import annotations

import os
import time

from PIL import Image

from watchd.config import OutputConfig
from watchd.errors import InputRejected
from watchd.imaging.cutout import cut_out, cut_out_raw
from watchd.imaging.decode import Page, decode_pages
from watchd.imaging.encode import encode
from watchd.imaging.product import finish, reshapes
from watchd.imaging.review_sheet import make_sheet
from watchd.imaging.sessions import Sessions
from watchd.masks import decode_mask, flatten, from_mask
from watchd.pool.task import Result, Task
from watchd.quality import Figures, measure, parse_conditions, tripped

#: The encoded outputs of one input together: a file's result travels to the daemon as one
#: message, so a document whose pages would exceed this is refused (split it).
MAX_RESULT_BYTES = 1 << 30


def process(task: Task, sessions: Sessions) -> Result:
    """Bytes in, encoded outputs out (one per page): decode, remove the background, encode.

    Pages are decoded, cut out and encoded one at a time; only the encoded bytes are kept.
    """
    session = sessions.get(task.model, task.threads) if task.mask is None else None
    timings = {"decode": 0.0, "infer": 0.0, "encode": 0.0, "quality": 0.0, "product": 0.0}
    figures: list[Figures] = []
    conditions = parse_conditions(task.review_if)
    sheet: bytes | None = None
    outputs: list[bytes] = []
    total = 0
    size = (0, 0)
    pages = decode_pages(task.data)
    while True:
        started = time.perf_counter()
        page = next(pages, None)
        decoded = time.perf_counter()
        if page is None:
            break
        try:
            if task.mask is None:
                made = cut_out_raw(page.image, session, task.output)
            else:  # a hand-edited mask (watchd/masks.py): no inference
                made = _from_hand_mask(page.image, task, len(outputs))
            inferred = time.perf_counter()
            # the quality figures (watchd/quality.py) of the whole frame, before any crop
            figures.append(measure(made if made.mode == "L" else made.getchannel("A")))
            if sheet is None and tripped(figures[-1:], conditions):
                sheet = make_sheet(page.image, made)
            measured = time.perf_counter()
            if reshapes(task.output):  # product shots (watchd/imaging/product.py)
                made = finish(made, task.output, task.background_image)
            made = flatten(made, task.output)
            shaped = time.perf_counter()
            data = encode(made, task.output, page)
        except MemoryError:
            raise InputRejected(too_big_for_memory(page.image.size)) from None
        encoded = time.perf_counter()
        timings["decode"] += decoded - started
        timings["infer"] += inferred - decoded
        timings["quality"] += measured - inferred
        timings["product"] += shaped - measured
        timings["encode"] += encoded - shaped
        if not outputs:
            size = page.image.size
        outputs.append(data)
        total += len(data)
        if total > MAX_RESULT_BYTES:
            raise InputRejected(
                f"the outputs of this file's {len(outputs)} pages exceed "
                f"{MAX_RESULT_BYTES >> 20} MiB, the most watchd makes from one file: "
                "split it into several files"
            )
        del page, made  # the next page is decoded without this one still held
    return Result(
        file_id=task.file_id,
        pages=tuple(outputs),
        width=size[0],
        height=size[1],
        timings=timings,
        threads=task.threads or sessions.threads,
        worker_pid=os.getpid(),
        quality=tuple(figures),
        review=tuple(tripped(figures, conditions)),
        sheet=sheet,
    )


def _from_hand_mask(image: Image.Image, task: Task, page: int) -> Image.Image:
    """The cutout (or mask) made from the job's hand-edited mask (watchd/masks.py), before
    the quality figures and product steps, exactly as the model's mask would be."""
    if page:
        raise InputRejected(
            f"the hand-edited mask {task.mask_name} belongs to a one-page image; this file "
            "has more pages"
        )
    mask = decode_mask(task.mask or b"", image.size, task.mask_name)
    return from_mask(image, mask, task.output)


def too_big_for_memory(size: tuple[int, int]) -> str:
    """The reason for an image whose processing needs more memory than a worker can get.

    Deterministic (the same image needs the same memory), so the file fails at once instead
    of being retried: an 80,000,000 x 1 PNG is under the pixel limit, but resizing a line
    that long for the model needs gigabytes.
    """
    width, height = size
    return (
        f"the image ({width} x {height} pixels) needs more memory to process than a worker "
        "can get (out of memory); images this large, or this long and thin, cannot be "
        "processed: scale or crop it"
    )


def warm_up(sessions: Sessions, model: str, threads: int = 0) -> None:
    """One small image through the whole default path, once, when the worker starts.

    The first inference of a session grows onnxruntime's arena and the first PNG loads
    libpng: without this, a fresh worker's first photo costs noticeably more than the next
    ones; the warm-up costs a fraction of a second per worker start (measured in
    docs/performance.md, "Numbers behind choices in the code").
    """
    session = sessions.get(model, threads)
    page = Page(Image.new("RGB", (64, 64), (128, 128, 128)))
    try:
        encode(cut_out(page.image, session, OutputConfig()), OutputConfig(), page)
    except Exception:  # a model that loads but cannot run: each of its files then fails
        return  # with the reason, which needs a worker that started
