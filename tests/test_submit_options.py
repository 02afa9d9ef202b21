"""``watchd submit``'s output options (--crop, --margin, --canvas, ...): checked by argparse
where that is cheap, carried in the socket request's ``options``, checked by the daemon
with a sidecar's rules (watchd.config.job_overrides), and recorded as a folder job with
that sidecar would be. Real parts: the CLI's parser, the control protocol's checks, the
real ledger and intake (tests/test_sidecar.py's rig). The real daemon: tests/test_e2e_product.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from tests.test_sidecar import Rig, make_rig, write
from watchd.cli import build_parser
from watchd.cli_ops import _submit
from watchd.commands import submitted_batch
from watchd.control import validate_args
from watchd.errors import ConfigError, ProtocolError


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "gif"], "argument --format: invalid choice: 'gif'"),
        (["--crop", "sideways"], "argument --crop: invalid choice: 'sideways'"),
        (["--align", "top"], "argument --align: invalid choice: 'top'"),
        (["--fill", "most"], "argument --fill: invalid float value: 'most'"),
        (["--margin", "ten"], "argument --margin: expected whole pixels (24) or a percentage"),
    ],
)
def test_a_bad_option_is_a_usage_error_before_anything_is_sent(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from watchd.cli import main

    missing_socket = tmp_path / "nobody.sock"  # nothing is sent: no daemon needed
    with pytest.raises(SystemExit) as exited:
        main(["submit", "/a.jpg", *argv, "--socket", str(missing_socket)])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


class Recorder:
    """A control client that records the request instead of sending it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, command: str, **args: Any) -> dict[str, Any]:
        self.calls.append((command, args))
        return {"id": 1, "files": 1, "watch": "photos", "priority": 0}


def sent(argv: list[str]) -> dict[str, Any]:
    args: argparse.Namespace = build_parser().parse_args(["submit", "/a.jpg", *argv])
    client = Recorder()
    with open("/dev/null", "w") as out:
        assert _submit(client, args, out) == 0
    [(command, request)] = client.calls
    assert command == "submit"
    return request


def test_the_options_travel_as_a_sidecars_keys() -> None:
    request = sent(
        [
            *("--crop", "subject", "--margin", "10", "--canvas", "800x600", "--fill", "0.5"),
            *("--align", "bottom", "--format", "webp", "--background", "#ffffff"),
            *("--model", "u2netp"),
        ]
    )
    assert request["options"] == {
        "model": "u2netp",
        "format": "webp",
        "background": "#ffffff",
        "crop": "subject",
        "margin": 10,  # pixels as an integer, as in a sidecar
        "canvas": "800x600",
        "fill": 0.5,
        "align": "bottom",
    }
    assert sent(["--margin", "5%"])["options"] == {"margin": "5%"}
    assert "options" not in sent([])  # none given: the watch's (or the folder's sidecar)


def test_the_protocol_takes_an_object_and_leaves_the_values_to_the_daemon() -> None:
    args = validate_args("submit", {"paths": ["/a.jpg"], "options": {"crop": "subject"}})
    assert args["options"] == {"crop": "subject"}
    with pytest.raises(ProtocolError) as refused:
        validate_args("submit", {"paths": ["/a.jpg"], "options": "crop=subject"})
    assert refused.value.code == "bad_request"
    assert "argument 'options' of 'submit' must be an object" in str(refused.value)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


#: Bad values of each option: each refusal names the option as a sidecar's names its key.
BAD = {
    "crop": ["sideways"],
    "margin": ["lots", [1], -1],
    "canvas": ["10by10", "0x10"],
    "fill": [2, "most"],
    "align": ["top"],
    "format": ["gif"],
    "background": ["red"],
    "model": ["../evil"],
    "inbox": ["/etc"],  # not an option at all: "not allowed in a job's watchd.toml"
}


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, values in BAD.items() for v in values])
def test_the_daemon_checks_the_values_with_a_sidecars_rules(rig: Rig, key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        rig.intake.given_overrides({key: value}, rig.watch, "submit options")
    assert str(refused.value).startswith(f"submit options: {key}: ")
    # JPEG has no transparency: as in a sidecar, the refusal names what is missing
    with pytest.raises(ConfigError, match="submit options: background: "):
        rig.intake.given_overrides({"format": "jpeg"}, rig.watch, "submit options")


def test_a_job_with_options_is_recorded_as_with_that_sidecar(rig: Rig, tmp_path: Path) -> None:
    source = write(tmp_path / "elsewhere" / "a.jpg")
    options = {"crop": "subject", "margin": "5%", "canvas": "600x600", "align": "bottom"}
    given = rig.intake.given_overrides(options, rig.watch, "submit options")
    batch = submitted_batch("photos", [source], None)
    job_id = rig.intake.accept(batch, rig.watch, intake="copy", given=(given, "submit options"))
    assert job_id is not None
    job = rig.ledger.job_detail(job_id)
    output = job.options.output
    assert (output.crop, output.margin, output.canvas, output.align) == (
        "subject",
        "5%",
        "600x600",
        "bottom",
    )
    assert job.options.sidecar == "submit options"

    # the same keys in a sidecar give the same options
    folder = write(tmp_path / "album" / "a.jpg").parent
    sidecar = b'crop = "subject"\nmargin = "5%"\ncanvas = "600x600"\nalign = "bottom"\n'
    write(folder / "watchd.toml", sidecar)
    by_sidecar = rig.intake.accept(submitted_batch("photos", [folder], None), rig.watch, "copy")
    assert by_sidecar is not None
    assert rig.ledger.job_detail(by_sidecar).options.output == output
