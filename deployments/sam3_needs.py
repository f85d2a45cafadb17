"""What the Segmenter's sam3 backend needs on this node, in plain words: the ``sam3`` package
(imported for real) and its pinned dependencies, CLIP's BPE vocabulary, the checkpoint.

No torch at import time: ``meshline backends check sam3`` lists these before loading anything.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from deployments.configs import SegmenterConfig
from deployments.errors import ModelLoadError

SAM3_VERSION = "0.1.4"
INSTALL = "pip install -r deployments/sam3-requirements.txt (the replica's pip runtime_env)"


@dataclass(frozen=True)
class Finding:
    """One need and whether this node has it. ``optional``: what is lost without it (None:
    the backend cannot run without it)."""

    what: str
    ok: bool
    detail: str  # where it was found, or what was found instead
    why: str = ""
    optional: str | None = None

    def sentence(self) -> str:
        if self.ok:
            return f"ok      {self.what}: {self.detail}"
        tail = f" (optional: {self.optional})" if self.optional else ""
        return f"missing {self.what}: {self.why}{tail} [{self.detail}]"


def _package() -> list[Finding]:
    what = f"Python package 'sam3' ({SAM3_VERSION})"
    try:
        importlib.import_module("sam3")
        version = metadata.version("sam3")
    except Exception as exc:  # noqa: BLE001 — whatever importing it raises, said plainly
        line = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return [Finding(what, False, line, f"SAM 3's code; {INSTALL}")]
    if version != SAM3_VERSION:
        why = f"meshline's adapter is written against sam3 {SAM3_VERSION}; {INSTALL}"
        return [Finding(what, False, f"sam3 {version} is installed", why)]
    return [Finding(what, True, f"sam3 {version}"), *_pins()]


def _pins() -> list[Finding]:
    """sam3's own requirements (numpy<2.4, …) against what is installed here."""
    from packaging.requirements import Requirement

    found = []
    for line in metadata.requires("sam3") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        what = f"Python package {requirement.name!r} ({requirement.specifier})"
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            found.append(Finding(what, False, "not installed", f"sam3 needs it; {INSTALL}"))
            continue
        if requirement.specifier.contains(version, prereleases=True):
            found.append(Finding(what, True, version))
        else:
            why = f"sam3 needs {requirement}; its pins live in {INSTALL}"
            found.append(Finding(what, False, f"{version} is installed", why))
    return found


def _vocabulary(config: SegmenterConfig) -> Finding:
    from deployments.sam3_segmenter import BPE_FILE, bpe_path

    what = f"CLIP's BPE vocabulary {BPE_FILE}"
    try:
        return Finding(what, True, bpe_path(config.sam3_bpe_path))
    except ModelLoadError as exc:
        why = "SAM 3's text tokenizer; MESHLINE_SAM3_BPE_PATH, or open_clip_torch (which ships it)"
        return Finding(what, False, str(exc), why)


def _checkpoint(config: SegmenterConfig) -> Finding:
    what = "checkpoint sam3.pt"
    where = "MESHLINE_SAM3_CHECKPOINT, or `meshline weights fetch sam3` (gated: HF_TOKEN)"
    if config.backend_options.get("arch") is not None:
        if config.checkpoint:
            why = "the arch option builds a smaller model that no checkpoint fits: drop one"
            return Finding(what, False, f"{config.checkpoint} with an arch option", why)
        return Finding(what, True, "none: the arch option's smaller model has random weights")
    if not config.checkpoint:
        lost = "without it the weights are RANDOM: masks and scores mean nothing"
        return Finding(what, False, "none configured or fetched", where, optional=lost)
    if "://" in config.checkpoint:
        return Finding(what, True, f"{config.checkpoint} (copied to the weights dir on load)")
    if not Path(config.checkpoint).is_file():
        return Finding(what, False, f"{config.checkpoint} does not exist", where)
    return Finding(what, True, config.checkpoint)


def sam3_findings(config: SegmenterConfig) -> list[Finding]:
    """Every need of the sam3 backend under ``config``, found or not, in the order to fix."""
    findings = _package()
    findings.append(_vocabulary(config))
    try:
        from deployments.sam3_segmenter import arch_from_options

        arch_from_options(config.backend_options)
        findings.append(_checkpoint(config))
    except ModelLoadError as exc:
        findings.append(Finding("backend options", False, str(exc), "segment_backend_options"))
    return findings


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if not f.ok and f.optional is None]
