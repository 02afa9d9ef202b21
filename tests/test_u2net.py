"""watchd's own copy of rembg's U²-Net steps gives rembg's pixels, and keeps rembg out of workers.

Real u2netp, real photos from scikit-image, rembg itself as the reference: the point of
watchd/imaging/u2net.py is to be the same to the bit, so every comparison here is exact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, _imaging

from watchd.imaging.u2net import PILLOW_BLOCK_SIZE, U2netSession, naive_cutout
from watchd.models import ModelStore


def _options() -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


@pytest.fixture(scope="module")
def ours(model_store: ModelStore) -> U2netSession:
    return U2netSession(model_store.path("u2netp"), _options(), ["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def rembg_session(model_store: ModelStore) -> object:
    from rembg import new_session

    return new_session("u2netp", sess_opts=_options(), providers=["CPUExecutionProvider"])


@pytest.fixture
def one_block() -> Iterator[None]:
    """Pillow's block size as a worker sets it (init_worker), restored afterwards."""
    before = _imaging.get_block_size()
    _imaging.set_block_size(PILLOW_BLOCK_SIZE)
    yield
    _imaging.set_block_size(before)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def _big(photo: Path, size: tuple[int, int]) -> Image.Image:
    with Image.open(photo) as image:
        return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("astronaut.jpg", None),
        ("coffee.png", None),
        ("rocket.jpg", None),
        ("chelsea.webp", (1600, 1200)),
        ("hubble.jpg", (4000, 3000)),
    ],
)
@pytest.mark.usefixtures("one_block")
def test_cutout_and_mask_are_rembgs_to_the_bit(
    ours: U2netSession,
    rembg_session: object,
    photos: dict[str, Path],
    name: str,
    size: tuple[int, int] | None,
) -> None:
    from rembg import remove

    if size is None:
        with Image.open(photos[name]) as opened:
            photo = opened.convert("RGB")
    else:
        photo = _big(photos[name], size)
    mask = ours.mask(photo)
    assert _same(mask, remove(photo, session=rembg_session, only_mask=True))
    cutout = naive_cutout(photo, mask)
    assert cutout.mode == "RGBA"
    assert _same(cutout, remove(photo, session=rembg_session))


def test_a_photo_with_its_own_alpha_is_cut_out_as_rembg_does(
    one_block: None, ours: U2netSession, rembg_session: object, photos: dict[str, Path]
) -> None:
    from rembg import remove

    with Image.open(photos["astronaut.jpg"]) as opened:
        photo = opened.convert("RGBA")
    ramp = np.tile(np.linspace(0, 255, photo.width).astype(np.uint8), (photo.height, 1))
    photo.putalpha(Image.fromarray(ramp))  # rembg multiplies this alpha by the mask too
    assert _same(naive_cutout(photo, ours.mask(photo)), remove(photo, session=rembg_session))


@pytest.mark.parametrize("block_size", [PILLOW_BLOCK_SIZE, 4096])
def test_naive_cutout_rounds_every_colour_and_mask_value_as_pillow(
    block_size: int, one_block: None
) -> None:
    """Every pair (colour 0-255, mask 0-255): the premultiplied way and Pillow's composite
    agree; also when the image spans several of Pillow's blocks (the copying fallback)."""
    _imaging.set_block_size(block_size)
    colour = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    photo = Image.fromarray(np.stack([colour, colour.T, 255 - colour], axis=-1))
    mask = Image.fromarray(colour.T.copy())
    expected = Image.composite(photo, Image.new("RGBA", photo.size, 0), mask)
    assert _same(naive_cutout(photo, mask), expected)


def test_imported_model_is_rembgs_u2net_custom(
    tmp_path: Path,
    model_store: ModelStore,
    photos: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rembg import remove
    from rembg.sessions.u2net_custom import U2netCustomSession

    source = model_store.path("u2netp")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))  # rembg loads custom models from there only
    path = ModelStore(tmp_path).import_file(source, "my-model")
    custom = U2netCustomSession(
        "u2net_custom", _options(), providers=["CPUExecutionProvider"], model_path=str(path)
    )
    with Image.open(photos["coffee.png"]) as opened:
        photo = opened.convert("RGB")
    mine = U2netSession(path, _options(), ["CPUExecutionProvider"])
    assert _same(mine.mask(photo), remove(photo, session=custom, only_mask=True))


def test_rembgs_remove_accepts_our_session_for_what_still_needs_rembg(
    ours: U2netSession, rembg_session: object, photos: dict[str, Path]
) -> None:
    """Post-processing and alpha matting run rembg's ``remove`` on watchd's session."""
    from rembg import remove

    with Image.open(photos["coffee.png"]) as opened:
        photo = opened.convert("RGB").resize((200, 133))
    expected = remove(photo, session=rembg_session, post_process_mask=True)
    assert _same(remove(photo, session=ours, post_process_mask=True), expected)


_WORKER = """
import json, sys
from pathlib import Path
from watchd.config import OutputConfig
from watchd.pool import worker
from watchd.pool.task import Task
worker.init_worker({}, 1, ("u2netp",))
data = Path(sys.argv[1]).read_bytes()
before = "rembg" in sys.modules
for output in (OutputConfig(), OutputConfig(format="mask"), OutputConfig(format="webp")):
    worker.run(Task(1, data, "u2netp", output))
plain = "rembg" in sys.modules
worker.run(Task(2, data, "u2netp", OutputConfig(post_process_mask=True)))
print(json.dumps([before, plain, "rembg" in sys.modules]))
"""


def test_a_worker_serving_u2netp_never_imports_rembg(
    model_store: ModelStore, photos: dict[str, Path]
) -> None:
    """The memory target rests on this: rembg's import alone is ~175 MiB per worker."""
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, str(photos["astronaut.jpg"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    before, plain, after_post_processing = json.loads(done.stdout.strip().splitlines()[-1])
    assert (before, plain) == (False, False)
    assert after_post_processing  # post-processing is rembg's, imported when first needed
