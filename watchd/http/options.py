"""The options a client may give a job, checked as the config checks a sidecar.

``POST /queue/submit`` takes the queue service's ``model``, ``format``,
``background``, ``priority``, ``name`` and ``watch``; ``POST /api/remove`` takes
rembg's server's ``model``, ``a``, ``af``, ``ab``, ``ae``, ``om``, ``ppm`` and
``bgc``. Both take the product-shot options ``crop``, ``margin``, ``canvas``, ``fill``
and ``align``. Either may come as query parameters or form fields. Output options become
the job's ``watchd.toml`` (the sidecar a folder job may carry, docs/routing.md), so
an HTTP job is recorded and processed exactly like a dropped folder; they are
validated with :func:`watchd.config.sidecar_overrides` before anything is written.
An unknown option or a bad value is a ``422`` that names it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from watchd.config import WatchConfig, sidecar_overrides
from watchd.errors import ConfigError
from watchd.models import KNOWN_MD5
from watchd.validate import COLOR_PATTERN, MAX_PRIORITY, MIN_PRIORITY

#: The priority of ``/api/remove`` jobs: a caller is waiting, so they go ahead of folder work.
REMOVE_PRIORITY = 100


def _known_model(value: str | None) -> str | None:
    if value is not None and value not in KNOWN_MD5:
        raise ValueError(f"unknown model {value!r}; known: {', '.join(sorted(KNOWN_MD5))}")
    return value


class ProductOptions(BaseModel):
    """The product-shot options both doors take (docs/outputs.md, "Product shots"), checked
    like a sidecar's keys."""

    model_config = ConfigDict(extra="forbid")

    crop: Literal["none", "subject"] | None = Field(None, description="crop to the subject")
    margin: int | str | None = Field(None, description='pixels ("24") or "5%"')
    canvas: str | None = Field(None, description='place the subject on a canvas "WxH"')
    fill: float | None = Field(None, description="the share of the canvas the subject takes")
    align: Literal["center", "bottom"] | None = None

    @field_validator("margin", mode="before")
    @classmethod
    def _margin(cls, value: Any) -> Any:
        """A form field is text: "24" is pixels, "5%" a percentage (checked as a sidecar's)."""
        if not isinstance(value, str) or value.endswith("%"):
            return value
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"expected whole pixels or a percentage, got {value!r}") from None


#: The sidecar keys :class:`ProductOptions` sets.
PRODUCT_KEYS = tuple(ProductOptions.model_fields)


class SubmitOptions(ProductOptions):
    """Options of ``POST /queue/submit`` (query parameters or form fields)."""

    model: str | None = Field(None, description="the model (default: the watch's)")
    format: Literal["png", "webp", "jpeg", "mask"] | None = None
    background: str | None = Field(None, pattern=f"^{COLOR_PATTERN}$", description='"#rrggbb"')
    priority: int | None = Field(
        None, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="higher runs first"
    )
    name: str | None = Field(
        None,
        pattern=r"^[^./\x00-\x1f][^/\x00-\x1f]{0,199}$",
        description="the job's name: its outputs go to a folder of this name in the outbox",
    )
    watch: str | None = Field(None, description="the watch the job belongs to")

    _model = field_validator("model")(_known_model)


class RemoveOptions(ProductOptions):
    """Options of ``POST /api/remove``: the names rembg's server uses, and the product-shot
    options, which rembg's server does not have."""

    model: str | None = Field(None, description="the model (default: the watch's)")
    a: bool = Field(False, description="alpha matting")
    af: int = Field(240, ge=0, le=255, description="alpha matting foreground threshold")
    ab: int = Field(10, ge=0, le=255, description="alpha matting background threshold")
    ae: int = Field(10, ge=0, le=255, description="alpha matting erode size")
    om: bool = Field(False, description="only the mask")
    ppm: bool = Field(False, description="post-process the mask")
    bgc: str | None = Field(
        None,
        pattern=r"^[0-9]{1,3},[0-9]{1,3},[0-9]{1,3}(,[0-9]{1,3})?$",
        description='background colour "R,G,B,A" (A = 0: none)',
    )

    _model = field_validator("model")(_known_model)


T = TypeVar("T", bound=BaseModel)

SUBMIT_FIELDS = frozenset(SubmitOptions.model_fields)
REMOVE_FIELDS = frozenset(RemoveOptions.model_fields)


def merged(kind: type[T], query: T, form: Mapping[str, str]) -> T:
    """Query options and form options together; the same option twice is a 422."""
    given = query.model_dump(exclude_unset=True)
    twice = sorted(set(given) & set(form))
    if twice:
        raise HTTPException(422, f"option {twice[0]!r} is given both in the query and the form")
    try:
        return kind.model_validate({**given, **form})
    except ValidationError as exc:
        raise HTTPException(422, _errors(exc)) from None


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ["body", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _given(options: BaseModel, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: getattr(options, k) for k in keys if getattr(options, k) is not None}


def submit_sidecar(options: SubmitOptions) -> dict[str, Any]:
    return _given(options, ("model", "format", "background", *PRODUCT_KEYS))


def remove_sidecar(options: RemoveOptions) -> dict[str, Any]:
    values: dict[str, Any] = {
        "format": "png",
        "alpha_matting": options.a,
        "alpha_matting_foreground_threshold": options.af,
        "alpha_matting_background_threshold": options.ab,
        "alpha_matting_erode_size": options.ae,
        "only_mask": options.om,
        "post_process_mask": options.ppm,
        **_given(options, PRODUCT_KEYS),
    }
    if options.model is not None:
        values["model"] = options.model
    if options.bgc is not None:
        parts = [int(p) for p in options.bgc.split(",")]
        if any(p > 255 for p in parts):
            raise HTTPException(422, f"bgc: each part must be 0 to 255, got {options.bgc!r}")
        if len(parts) == 3 or parts[3] > 0:
            values["background"] = "#{:02x}{:02x}{:02x}".format(*parts[:3])
    return values


def sidecar_text(values: Mapping[str, Any], watch: WatchConfig) -> bytes:
    """The job's ``watchd.toml``, checked against ``watch`` as a dropped one would be (422)."""
    text = "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
    data = text.encode("utf-8")
    try:
        sidecar_overrides(Path("the request's options"), data, watch)
    except ConfigError as exc:
        raise HTTPException(422, str(exc)) from None
    return data
