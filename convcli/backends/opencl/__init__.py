"""The OpenCL backend (pyopencl, imported lazily inside its modules)."""
