"""The job stages, declared once. Every other stage table is derived from ``STAGES``: the API's
stage names and order (serve_app/schemas.py), what ``plan_stages`` checks, the runner's dispatch
(``STAGE_RUNNERS`` in serve_app/jobs/pipeline.py) and the deployment label of the stage metrics.

A new stage: one ``Stage`` here (its name also in ``StageName``), its runner function in
pipeline.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# A Literal, for the OpenAPI schema; checked against STAGES below (same names, same order).
StageName = Literal["segment", "reconstruct", "paint", "convert", "propagate"]


@dataclass(frozen=True)
class Stage:
    name: StageName
    kind: Literal["image", "video"]  # image: the photo → mesh pipeline; video: runs alone
    deployment: str  # the deployment that does its work (the stage latency metric's label)
    needs: tuple[str, ...]  # named inputs: supplied with the job, or made by an earlier stage
    makes: tuple[str, ...]  # named outputs for later stages
    runner: str  # its function in serve_app/jobs/pipeline.py


# The image stages in pipeline order, then the video stage (a propagation job's only one).
STAGES: tuple[Stage, ...] = (
    Stage("segment", "image", "Segmenter", ("image",), ("mask",), "run_segment"),
    Stage("reconstruct", "image", "Reconstructor", ("image", "mask"), ("mesh",), "run_reconstruct"),
    Stage("paint", "image", "Reconstructor", ("image", "mask", "mesh"), ("mesh",), "run_paint"),
    Stage("convert", "image", "Converter", ("mesh",), (), "run_convert"),
    Stage("propagate", "video", "Segmenter", ("video",), (), "run_propagate"),
)
if get_args(StageName) != tuple(stage.name for stage in STAGES):
    raise TypeError("StageName must list the names of STAGES, in their order")

STAGE_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
# The image pipeline; "propagate" is the one stage of a video propagation job.
STAGE_ORDER: tuple[StageName, ...] = tuple(s.name for s in STAGES if s.kind == "image")
VIDEO_STAGES: tuple[StageName, ...] = tuple(s.name for s in STAGES if s.kind == "video")
STAGE_NEEDS: dict[str, tuple[str, ...]] = {s.name: s.needs for s in STAGES}
STAGE_MAKES: dict[str, tuple[str, ...]] = {s.name: s.makes for s in STAGES}
