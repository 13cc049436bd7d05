"""The option words the API and the CLI share, in a module without NumPy: the CLI
builds its options (and ``convcli --help``) from them before any array code loads."""

from __future__ import annotations

ALGOS: tuple[str, ...] = ("auto", "direct", "separable", "fft", "gemm")
PADDING_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate", "circular", "symmetric")
# Pillow's own decompression-bomb limit (89478485) warns and 2x that raises; we use a
# single limit of that 2x value, adjustable per call (``--max-pixels``).
DEFAULT_MAX_PIXELS: int = 178_956_970
