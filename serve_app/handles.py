"""Typed calls from the ingress to the model deployments.

Serve hands the Ingress one ``DeploymentHandle`` per model deployment; ``handle.segment.remote``
accepts anything and answers ``DeploymentResponse[Any]``, so a typo in a keyword or a stale
result field only shows at run time, in a replica. ``Handles`` keeps those handles (typed as
``DeploymentHandle``, as Serve passes them) and gives one small client per deployment whose
methods take the protocol's request types and return ``DeploymentResponse[<result type>]``
(``DeploymentResponseGenerator`` for the streamed video call): awaiting one gives a
``SegmentResult``, a ``DetectResult``… that a type checker and a reader can follow.

Why wrappers here rather than ``typing.Protocol`` classes in deployments/protocol.py: the
typed surface the ingress needs is not the deployment class's own (Serve's handle adds
``.remote``, ``.options`` and routing), and two facts of the call belong with the caller, not
the model: routing (a detect call goes to ``<model>@<generation>``, a video call to the
replica holding the video's session) and what is awaited (the response itself, so that a
stage can still cancel it in the replica: ``jobs.pipeline.replica_call``). The clients return
the response unawaited for that reason, and add nothing else: the deployment's method
signature is the wire contract (protocol requests mirror it; tests check they agree), so
notebooks keep calling the handles directly with keywords.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from deployments.protocol import (
    ConvertRequest,
    ConvertResult,
    DetectRequest,
    DetectResult,
    EncodeImageRequest,
    FrameBatch,
    ImageEncoded,
    PaintRequest,
    PaintResult,
    ReconstructRequest,
    ReconstructResult,
    SegmentImageRequest,
    SegmentRequest,
    SegmentResult,
    VideoPromptRequest,
    VideoPromptResult,
    VideoPropagateRequest,
    image_route,
    routed_id,
)


@dataclass(frozen=True)
class SegmenterClient:
    handle: DeploymentHandle[Any]

    def segment(self, request: SegmentRequest) -> DeploymentResponse[SegmentResult]:
        return cast(
            DeploymentResponse[SegmentResult], self.handle.segment.remote(**request.kwargs())
        )

    def segment_image(self, request: SegmentImageRequest) -> DeploymentResponse[SegmentResult]:
        """Routed to the replica holding the image's embedding (any other one recomputes it)."""
        routed = self.handle.options(multiplexed_model_id=image_route(request.image_id))
        return cast(
            DeploymentResponse[SegmentResult], routed.segment_image.remote(**request.kwargs())
        )

    def encode_image(self, request: EncodeImageRequest) -> DeploymentResponse[ImageEncoded]:
        """Routed as ``segment_image``: the prompt's call for the same image finds it there."""
        routed = self.handle.options(multiplexed_model_id=image_route(request.image_id))
        return cast(
            DeploymentResponse[ImageEncoded], routed.encode_image.remote(**request.kwargs())
        )

    def video_prompt(self, request: VideoPromptRequest) -> DeploymentResponse[VideoPromptResult]:
        """Routed to the replica holding the video's session (any other one rebuilds it)."""
        routed = self.handle.options(multiplexed_model_id=request.video_id)
        return cast(
            DeploymentResponse[VideoPromptResult], routed.video_prompt.remote(**request.kwargs())
        )

    def video_propagate(
        self, request: VideoPropagateRequest
    ) -> DeploymentResponseGenerator[FrameBatch]:
        """Streamed: iterate it for ``FrameBatch``es; ``cancel()`` stops tracking in the replica."""
        routed = self.handle.options(multiplexed_model_id=request.video_id, stream=True)
        return cast(
            DeploymentResponseGenerator[FrameBatch],
            routed.video_propagate.remote(**request.kwargs()),
        )


@dataclass(frozen=True)
class DetectorClient:
    handle: DeploymentHandle[Any]

    def detect(
        self, request: DetectRequest, model_id: str, generation: int = 0
    ) -> DeploymentResponse[DetectResult]:
        """With registry model ``model_id`` as of its ``generation``-th reload (the job store
        counts reloads; a new generation makes every replica load the current file)."""
        routed = self.handle.options(multiplexed_model_id=routed_id(model_id, generation))
        return cast(DeploymentResponse[DetectResult], routed.detect.remote(**request.kwargs()))


@dataclass(frozen=True)
class ReconstructorClient:
    handle: DeploymentHandle[Any]

    def reconstruct(self, request: ReconstructRequest) -> DeploymentResponse[ReconstructResult]:
        return cast(
            DeploymentResponse[ReconstructResult],
            self.handle.reconstruct.remote(**request.kwargs()),
        )

    def paint(self, request: PaintRequest) -> DeploymentResponse[PaintResult]:
        return cast(DeploymentResponse[PaintResult], self.handle.paint.remote(**request.kwargs()))


@dataclass(frozen=True)
class ConverterClient:
    handle: DeploymentHandle[Any]

    def convert(self, request: ConvertRequest) -> DeploymentResponse[ConvertResult]:
        return cast(
            DeploymentResponse[ConvertResult], self.handle.convert.remote(**request.kwargs())
        )


@dataclass
class Handles:
    """The model deployments' handles as Serve passes them to the Ingress, and their clients."""

    segmenter: DeploymentHandle[Any]
    reconstructor: DeploymentHandle[Any]
    converter: DeploymentHandle[Any]
    detector: DeploymentHandle[Any]

    def of(self, deployment: str) -> DeploymentHandle[Any]:
        """The handle of a model deployment by its name ("Segmenter", "Detector", ...)."""
        handles = {
            "Segmenter": self.segmenter,
            "Reconstructor": self.reconstructor,
            "Converter": self.converter,
            "Detector": self.detector,
        }
        return handles[deployment]

    @property
    def segmenter_client(self) -> SegmenterClient:
        return SegmenterClient(self.segmenter)

    @property
    def detector_client(self) -> DetectorClient:
        return DetectorClient(self.detector)

    @property
    def reconstructor_client(self) -> ReconstructorClient:
        return ReconstructorClient(self.reconstructor)

    @property
    def converter_client(self) -> ConverterClient:
        return ConverterClient(self.converter)
