"""Fail (exit 1) when Oclgrind's stderr holds a report: an invalid memory access, a data
race or an OpenCL API misuse. One API report is pyopencl's, not convcli's, and is
dropped: creating a kernel object queries a vendor device property Oclgrind 19.10 does
not implement (clGetDeviceInfo CL_INVALID_VALUE for param_name)."""

from __future__ import annotations

import re
import sys

BENIGN = re.compile(
    r"Oclgrind - OpenCL runtime error detected\n\s*Function: clGetDeviceInfo\n"
    r"\s*Error:\s+CL_INVALID_VALUE\n\s*For argument 'param_name'\n"
)
REPORT = re.compile(
    r"Invalid (read|write)|data race|runtime error detected|Oclgrind - |Uninitiali[sz]ed"
)


def main(path: str) -> int:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = BENIGN.sub("", f.read())
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if REPORT.search(line)]
    for i in hits[:20]:
        print("\n".join(lines[i : i + 6]), file=sys.stderr)
    if hits:
        print(f"ci: oclgrind: FAILED: {len(hits)} report(s) in {path}", file=sys.stderr)
        return 1
    print(f"ci: oclgrind: no invalid access, race or API error reported ({path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
