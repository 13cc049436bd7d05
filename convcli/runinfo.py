"""What one convolution call did: backend, device, algorithm, notices, stage timings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunInfo:
    """What a call did, filled in by :func:`conv2d` when passed as ``info=``.

    ``timings`` holds seconds per stage: ``build`` (OpenCL program builds), ``upload``,
    ``compute`` (kernel time from OpenCL profiling events on that backend), ``download``
    and ``total`` (wall time of the whole call). ``notices`` holds one-line messages,
    e.g. why ``backend="auto"`` fell back to NumPy.
    """

    backend: str = ""
    device: str = ""
    algo: str = ""
    tiles: int = 0
    flops: int = 0
    notices: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, other: RunInfo) -> None:
        """Accumulate another call's info (used when summing a batch)."""
        self.backend = self.backend or other.backend
        self.device = self.device or other.device
        self.algo = self.algo or other.algo
        self.tiles += other.tiles
        self.flops += other.flops
        for note in other.notices:
            if note not in self.notices:
                self.notices.append(note)
        for key, value in other.timings.items():
            self.timings[key] = self.timings.get(key, 0.0) + value


def fallback_notice(exc: BaseException) -> str:
    """The notice for an OpenCL call that went to NumPy under ``backend='auto'``.

    One wording per cause, whichever path hit it (conv2d, the strips, the small-image
    step), so that one missing device is one line, not "unavailable" and "failed" twice.
    """
    from convcli.errors import BackendUnavailable

    what = "unavailable" if isinstance(exc, BackendUnavailable) else "failed"
    return f"OpenCL {what} ({exc}); using NumPy"
