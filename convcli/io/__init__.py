"""Files <-> arrays: images (:mod:`convcli.io.images`), weight files
(:mod:`convcli.io.weights`), and the one way convcli creates a file
(:mod:`convcli.io.publish`: atomic, no-clobber)."""

from __future__ import annotations

from convcli.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    JPEG_SUBSAMPLINGS,
    PIL_FORMATS,
    WRITE_FORMATS,
    Image,
    probe_image,
    read_image,
    read_jpeg_subsampling,
    write_image,
)
from convcli.io.weights import load_weights
from convcli.pixels import (
    ALPHA_MODES,
    ALPHA_STEPS,
    OUT_MAPS,
    AlphaMode,
    OutMap,
    filters_alpha,
    finish_alpha,
    map_output,
    prepare_alpha,
)

__all__ = [
    "ALPHA_MODES",
    "ALPHA_STEPS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "JPEG_SUBSAMPLINGS",
    "OUT_MAPS",
    "PIL_FORMATS",
    "WRITE_FORMATS",
    "AlphaMode",
    "Image",
    "OutMap",
    "filters_alpha",
    "finish_alpha",
    "load_weights",
    "map_output",
    "prepare_alpha",
    "probe_image",
    "read_image",
    "read_jpeg_subsampling",
    "write_image",
]
