"""The options a job is processed with: one frozen value, made at intake, kept by the ledger.

A reload or an edited sidecar never changes a job already recorded: :func:`job_options`
freezes the watch's settings (and its sidecar's overrides) when the job is accepted,
the ledger stores them as JSON with the job (:meth:`JobOptions.to_json`), and every
later step (dispatch, the worker, disposal, the manifest) reads this value, never the
configuration. :meth:`JobOptions.from_json` also reads rows written by older versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

from watchd.config import AfterAction, Duplicates, JobOverrides, OutputConfig, WatchConfig

IntakeMode = Literal["inbox", "copy", "move"]

#: The file suffix of each output format (a mask is a greyscale PNG).
OUTPUT_SUFFIXES = {"png": ".png", "mask": ".png", "webp": ".webp", "jpeg": ".jpg"}


@dataclass(frozen=True)
class JobOptions:
    """How every file of one job is processed and where its original goes afterwards."""

    model: str
    after: AfterAction
    max_file_bytes: int
    output: OutputConfig = field(default_factory=OutputConfig)
    #: how the inputs came: dropped in an inbox, or ``submit`` copied or moved them
    intake: IntakeMode = "inbox"
    #: inputs that are never moved (``after = "keep"`` on an inbox): read where they lie
    in_place: bool = False
    #: the sidecar that set them (``<folder>/watchd.toml``), for notes and logs
    sidecar: str | None = None
    #: the quality gate (watchd/review.py): the ``review_if`` conditions (watchd/quality.py),
    #: and the folder where an output that trips one waits; empty: nothing is held
    review_if: tuple[str, ...] = ()
    review: str | None = None
    #: an input seen before (watchd/content_cache.py): "reprocess", "reuse" or "skip"
    duplicates: Duplicates = "reprocess"
    #: hand-edited masks paired at intake (watchd/masks.py): input rel -> its mask's rel
    masks: Mapping[str, str] = field(default_factory=dict)
    #: where the masks lie until spooled, when not beside their inputs: a mask dropped
    #: after its original, which is read from the archive (watchd/late_masks.py)
    mask_dir: str | None = None

    def mask_for(self, rel: str) -> str | None:
        """The relative path of the hand-edited mask of the input ``rel``, if it has one."""
        return self.masks.get(rel)

    @property
    def suffix(self) -> str:
        """The outputs' file suffix."""
        return OUTPUT_SUFFIXES[self.output.format]

    @property
    def copied(self) -> bool:
        """The original was never touched (``submit`` copied it into the spool)."""
        return self.intake == "copy"

    def to_json(self) -> dict[str, Any]:
        """The stored form (the ledger's ``jobs.options`` column, ``watchd job``'s view)."""
        data: dict[str, Any] = {
            "model": self.model,
            "after": self.after,
            "output": asdict(self.output),
            "max_file_bytes": self.max_file_bytes,
            "intake": self.intake,
            "in_place": self.in_place,
        }
        if self.sidecar is not None:
            data["sidecar"] = self.sidecar
        if self.review_if:
            data["review_if"] = list(self.review_if)
            data["review"] = self.review
        if self.duplicates != "reprocess":
            data["duplicates"] = self.duplicates
        if self.masks:
            data["masks"] = dict(self.masks)
        if self.mask_dir is not None:
            data["mask_dir"] = self.mask_dir
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobOptions:
        """The stored form back; rows from before a key existed get what it meant then:
        no ``output`` (PNG, at the recorded ``png_compress_level`` if any), no ``intake``
        (an inbox), no ``in_place`` (moved to the spool)."""
        try:
            recorded = data.get("output")
            if isinstance(recorded, Mapping):
                output = OutputConfig(**recorded)
            elif isinstance(data.get("png_compress_level"), int):
                output = OutputConfig(png_compress_level=data["png_compress_level"])
            else:
                output = OutputConfig()
            sidecar = data.get("sidecar")
            review = data.get("review")
            masks = data.get("masks", {})
            mask_dir = data.get("mask_dir")
            return cls(
                model=str(data["model"]),
                after=cast(AfterAction, data["after"]),
                max_file_bytes=int(data["max_file_bytes"]),
                output=output,
                intake=cast(IntakeMode, data.get("intake", "inbox")),
                in_place=bool(data.get("in_place", False)),
                sidecar=None if sidecar is None else str(sidecar),
                review_if=tuple(str(c) for c in data.get("review_if", ())),
                review=None if review is None else str(review),
                duplicates=cast(Duplicates, data.get("duplicates", "reprocess")),
                masks={str(k): str(v) for k, v in masks.items()},
                mask_dir=None if mask_dir is None else str(mask_dir),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a job's stored options cannot be read ({exc!r}): {data!r}") from None


def job_options(
    watch: WatchConfig,
    intake: IntakeMode = "inbox",
    overrides: JobOverrides | None = None,
    sidecar: str | None = None,
) -> JobOptions:
    """The options a job of ``watch`` is processed with, frozen when it is accepted.

    ``overrides``: its sidecar's (``sidecar`` names that file). Every input that is not
    ``in_place`` waits in the spool: moved there from the inbox, or copied/moved there by
    ``submit``.
    """
    return JobOptions(
        model=overrides.model if overrides else watch.model,
        after=watch.after,
        max_file_bytes=watch.max_file_bytes,
        output=overrides.output if overrides else watch.output,
        intake=intake,
        in_place=intake == "inbox" and watch.after == "keep",
        sidecar=sidecar,
        review_if=watch.review_if,
        review=str(watch.review) if watch.review_if and watch.review is not None else None,
        duplicates=overrides.duplicates if overrides else watch.duplicates,
    )
