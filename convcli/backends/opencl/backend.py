"""The OpenCL backend: :class:`OpenCLBackend`, a :class:`~.runtime.Runtime` on one device
that plans each convolution and runs it on a kernel family.

Where each part lives: :mod:`.device` (discovery, ranking, limits, the self-test),
:mod:`.runtime` (build and cache, buffers, launch sizing, timing, faults),
:mod:`.settings` (the tuning values a backend holds), :mod:`.plan` (which family runs a
convolution), and one module per kernel family: :mod:`.direct` (the generic kernel),
:mod:`.depthwise`, :mod:`.separable`, :mod:`.gemm`, :mod:`.winograd`, :mod:`.fft` and the
GPU-shaped :mod:`.gpu`.

pyopencl is imported only inside functions, and this package only when OpenCL is
requested, so ``import convcli`` and the NumPy backend work without OpenCL.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from convcli.backends import build_index
from convcli.backends.opencl import direct, gpu, plan
from convcli.backends.opencl.device import _all_devices, _select, import_cl, inline_device
from convcli.backends.opencl.runtime import Runtime, _error_line, inject_fault, translate_errors
from convcli.errors import BackendError, BackendUnavailable, ConvValueError
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec


class OpenCLBackend(Runtime):
    """Runs convolutions on one OpenCL device (one context and one profiling queue).

    Use :meth:`create`; the device and its caches are the :class:`Runtime`'s, the
    tuning is ``settings``.
    """

    name = "opencl"

    # ---- creation -------------------------------------------------------------
    @classmethod
    def create(cls, device: str | None = None) -> OpenCLBackend:
        """Open a context and a profiling queue on the selected device.

        Raises
        ------
        BackendUnavailable
            pyopencl not importable, no platform, no device matching ``device`` (or the
            environment's choice), or the context cannot be created. One line.
        """
        t0 = time.perf_counter()
        # a fresh process's start-up (pyopencl's import, the driver's first platform
        # query) is what the cost model weighs; a later context in the same process
        # opens in microseconds and teaches nothing
        fresh = "pyopencl" not in sys.modules
        cl = import_cl()
        found = _all_devices()
        chosen = _select(found, device)
        try:
            inject_fault("init")
            ctx = cl.Context([chosen.device])
            queue = cl.CommandQueue(
                ctx, chosen.device, properties=cl.command_queue_properties.PROFILING_ENABLE
            )
        except (cl.Error, MemoryError) as exc:
            raise BackendUnavailable(
                f"cannot open OpenCL device {chosen.label}: {_error_line(exc)}"
            ) from exc
        backend = cls(cl, chosen.platform, chosen.device, ctx, queue)
        backend.request = device
        backend._inline_device = inline_device(chosen.platform, chosen.device)
        # what the next process's cost model needs before it starts OpenCL
        build_index.save_device(
            device,
            build_index.DeviceRecord(
                fingerprint=backend.fingerprint,
                label=backend.device_name,
                is_cpu=backend.is_cpu,
                local_mem=backend.limits.local_mem_bytes,
                startup_s=time.perf_counter() - t0 if fresh else None,
            ),
        )
        return backend

    def __repr__(self) -> str:
        return f"OpenCLBackend({self.device_name!r})"

    # ---- the inline device ----------------------------------------------------
    _inline_device: object = None  # PoCL's hidden basic device beside this one, if any
    _inline: Runtime | None = None
    _inline_limit: tuple | None = None  # (settings, multiply-adds) it was worked out for

    def inline_max_macs(self) -> int:
        """The largest layer :meth:`runtime_for` runs on the inline device, in
        multiply-adds over the batch (a depthwise layer's count
        ``settings.inline_dw_weight`` times: its kernels do fewer a second):
        ``settings.inline_max_macs``, or by default 6M over the threaded device's compute
        units (a wider machine's threads pay sooner).

        Measured on 2 cores (3M), per layer of mobilenet_v3_small, shufflenet,
        efficientnet_b0 and regnet_y_400mf at batch 1 (the minimum of 9 calls, alternating,
        on a busy machine): dense and 1x1 layers up to ~3M multiply-adds and depthwise
        ones up to ~1.5M ran as fast or faster inline (100-250 us layers by 10-80 us);
        above, the threaded device's two threads won by up to 1.4x (regnet's 104-channel
        3x3 with 13 groups on 28x28, 5.9M: 286 against 398 us; a 96-channel depthwise 3x3
        on 112x112: 465 against 593 us). Under load the inline device won more often (a
        busy second core delays the threaded device's second thread).
        """
        s = self.settings
        kept = self._inline_limit
        if kept is not None and kept[0] is s:
            return kept[1]
        if s.inline_max_macs is not None:
            limit = s.inline_max_macs
        else:
            limit = 6_000_000 // max(1, int(self.device.max_compute_units))
        self._inline_limit = (s, limit)
        return limit

    def _inline_macs(self, spec: ConvSpec) -> float:
        """``spec``'s multiply-adds as :meth:`inline_max_macs` counts them: a depthwise
        layer's ``settings.inline_dw_weight`` times, a 1x1 GEMM's (stride 1, no padding)
        on a map of at most ``settings.inline_1x1_pixels`` ``settings.inline_1x1_share``
        times."""
        if spec.cin_g == 1:
            return spec.macs * self.settings.inline_dw_weight
        s = self.settings
        flat = (spec.kh, spec.kw, spec.stride) == (1, 1, (1, 1)) and not any(spec.pad)
        if flat and spec.h * spec.w <= s.inline_1x1_pixels:
            return spec.macs * s.inline_1x1_share
        return spec.macs

    def runtime_for(self, spec: ConvSpec) -> Runtime:
        """The runtime that runs ``spec``: this device's, or for a small layer (see
        :meth:`inline_max_macs`) the inline device's (PoCL's basic device, which runs
        kernels in the calling thread: no worker thread to wake, none left running after
        the call). Falls back to this device's when the inline one cannot be opened."""
        if self._inline_device is None:
            return self
        if self._inline_macs(spec) > self.inline_max_macs():
            return self
        rt = self._inline
        if rt is None:
            rt = self._open_inline()
            if rt is None:
                return self
        rt.settings = self.settings
        return rt

    def has_program(self, name: str, defines: dict[str, int | float | str]) -> bool:
        """Whether this device or the inline one holds the program already."""
        inline = self._inline
        return super().has_program(name, defines) or (
            inline is not None and inline.has_program(name, defines)
        )

    def built_any(self) -> bool:
        inline = self._inline
        return super().built_any() or (inline is not None and inline.built_any())

    def _open_inline(self) -> Runtime | None:
        cl = self._cl
        try:
            ctx = cl.Context([self._inline_device])
            queue = cl.CommandQueue(
                ctx, self._inline_device, properties=cl.command_queue_properties.PROFILING_ENABLE
            )
        except (cl.Error, MemoryError):
            self._inline_device = None  # not again: the threaded device runs everything
            return None
        rt = Runtime(cl, self.platform, self._inline_device, ctx, queue)
        # the same compiler and binaries (PoCL keys its cache by the CPU, not the
        # driver): the build index's records stay this device's
        rt.fingerprint, rt.request = self.fingerprint, self.request
        rt.device_name = self.device_name
        self._inline = rt
        return rt

    # ---- capability -----------------------------------------------------------
    def supports(self, spec: ConvSpec) -> str | None:
        """Reason why ``spec`` cannot run on this device, or None."""
        if spec.dtype in ("float64", "complex128") and not self.has_fp64:
            return f"{self.device_name} has no fp64 support, needed for {spec.dtype}"
        # the kernels index a plane and an output plane with 32-bit ints
        limit = 2**31 - 1
        if spec.h * spec.w >= limit or spec.h_out * spec.w_out >= limit:
            return "an image plane of 2**31 pixels or more is beyond 32-bit kernel indexing"
        # strides, dilations and padded sizes are 32-bit ints in the kernels too (a
        # stride of 3e9 wrapped negative and the kernel ran for minutes)
        padded = (spec.h + spec.pad[0] + spec.pad[1], spec.w + spec.pad[2] + spec.pad[3])
        extents = (spec.dilation[0] * (spec.kh - 1) + 1, spec.dilation[1] * (spec.kw - 1) + 1)
        if max(*padded, *extents, *spec.stride, *map(abs, spec.pad)) >= limit:
            return "a stride, dilation or padding of 2**31 or more is beyond 32-bit kernel indexing"
        return None

    def plan_algo(self, spec: ConvSpec, weight: np.ndarray) -> str:
        """The algorithm ``algo="auto"`` runs for ``spec`` (tiles reuse the whole's)."""
        chosen = plan.for_device(spec, weight, "auto", cpu=self.is_cpu, settings=self.settings)
        return "direct" if chosen[0] is None else chosen[0].algo

    def fixed_plan(self, spec: ConvSpec) -> str | None:
        """What :meth:`plan_algo` answered for ``spec`` if that answer cannot depend on
        the weights' values, else None (also when it has not been asked yet)."""
        found = plan.remembered(spec, "auto", self.is_cpu, self.settings)
        if found is None:
            return None
        chosen = gpu.device_plan(found[0], spec, "auto", self.is_cpu, self.settings)
        return "direct" if chosen is None else chosen.algo

    # ---- running --------------------------------------------------------------
    def run(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray | None,
        spec: ConvSpec,
        *,
        algo: str = "auto",
        info: RunInfo,
    ) -> np.ndarray:
        """Convolve batched ``x``; returns ``(N, C_out, Ho, Wo)`` in the compute dtype.

        Tries the planned fast path (:func:`convcli.backends.opencl.plan.run`) first;
        when none applies, runs the generic direct kernel. Raises ConvValueError for a
        forced ``algo`` that cannot run this convolution, BackendError for device
        failures.
        """
        with self.current(info), translate_errors("OpenCL"):
            # the fault switches act on every run, whichever path allocates and launches
            inject_fault("alloc")
            inject_fault("run")
            rt = self.runtime_for(spec)
            out = plan.run(rt, x, weight, bias, spec, algo=algo, info=info)
            if out is None:
                if algo not in ("auto", "direct"):
                    raise ConvValueError(
                        f"algo='{algo}' is not available on the OpenCL backend for this "
                        f"convolution (kernel {spec.kh}x{spec.kw}, groups={spec.groups}, "
                        f"dtype {spec.dtype})"
                    )
                reason = self.supports(spec)
                if reason is not None:
                    raise BackendError(reason)
                out = direct.run(rt, x, weight, bias, spec, info=info)
            return out

    def run_direct(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray | None,
        spec: ConvSpec,
        *,
        info: RunInfo,
    ) -> np.ndarray:
        """The generic kernel ``conv2d_direct``: every stride, dilation, group, mode, dtype."""
        reason = self.supports(spec)
        if reason is not None:
            raise BackendError(reason)
        return direct.run(self, x, weight, bias, spec, info=info)
