"""``convcli devices``: the OpenCL platforms and devices, the one ``--backend auto``
picks, and with ``--check`` each device's self-test."""

from __future__ import annotations

import json
from typing import Any

import click

from convcli.cli.group import cli
from convcli.cli.messages import echo_line, rich_console


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--check",
    is_flag=True,
    help="Run a self-test on each device: a few small convolutions against NumPy.",
)
def devices(as_json: bool, check: bool) -> int:
    """List OpenCL platforms and devices; the one 'auto' picks is marked.

    With --check, each device also runs a self-test (one small convolution per kernel
    family, compared with NumPy); the exit code is 1 when any device fails it.
    """
    try:
        from convcli.backends.opencl.device import check_devices, list_devices, no_device_reason

        found = list_devices()
    except ImportError as exc:
        found, why = [], f"pyopencl is not importable ({exc})"
    else:
        why = no_device_reason()
    checks = {c.index: c for c in check_devices()} if check and found else {}
    # a device setting that names none of the devices: nothing is marked, and says why
    problem = None
    if found and not any(d.default for d in found):
        from convcli.backends.opencl.device import auto_device_problem

        problem = auto_device_problem()
    if as_json:
        records = [_device_record(d, checks.get(d.index)) for d in found]
        click.echo(json.dumps(records, indent=2))
        if problem:
            echo_line(f"{problem}; --backend auto uses NumPy", "notice")
        return _checks_exit(checks)
    if not found:
        echo_line(f"{why}; convcli uses the NumPy backend", "notice")
        return 0
    from rich.table import Table

    table = Table(title="OpenCL devices (* = used by --backend auto)", title_justify="left")
    columns = ["", "index", "platform", "device", "type", "CUs", "memory", "max alloc"]
    columns += ["local mem", "work-group", "fp64", "fp16"]
    if checks:
        columns += ["self-test", "build s"]
    for col in columns:
        table.add_column(col, overflow="fold")
    for d in found:
        row = [
            "*" if d.default else "",
            d.index,
            d.platform,
            d.name,
            f"{d.type} ({d.kind})" if d.kind else d.type,
            str(d.compute_units),
            _human_bytes(d.global_mem_bytes),
            _human_bytes(d.max_alloc_bytes),
            _human_bytes(d.local_mem_bytes),
            f"{d.max_work_group_size} ({' x '.join(map(str, d.max_work_item_sizes))})",
            "yes" if d.fp64 else "no",
            "yes" if d.fp16 else "no",
        ]
        c = checks.get(d.index)
        if c is not None:
            verdict = "pass" if c.ok else "FAIL"
            row += [f"{verdict} {c.passed}/{c.total}", f"{c.build_seconds:.1f}"]
        table.add_row(*row)
    rich_console(stdout=True).print(table)
    if problem:
        echo_line(f"{problem}; --backend auto uses NumPy", "notice")
    for c in checks.values():
        for failure in c.failures:
            echo_line(f"device {c.index}: {failure}", "notice")
    return _checks_exit(checks)


def _checks_exit(checks: dict[str, Any]) -> int:
    """The exit code of ``devices``: 1 when a device failed its self-test."""
    return 1 if any(not c.ok for c in checks.values()) else 0


def _device_record(d: Any, check: Any = None) -> dict[str, Any]:
    keys = (
        "index",
        "platform",
        "name",
        "type",
        "kind",
        "compute_units",
        "global_mem_bytes",
        "max_alloc_bytes",
        "local_mem_bytes",
        "max_work_group_size",
        "max_work_item_sizes",
        "fp64",
        "fp16",
        "default",
    )
    record = {k: getattr(d, k) for k in keys}
    record["max_work_item_sizes"] = list(d.max_work_item_sizes)
    if check is not None:
        record["check"] = {
            "ok": check.ok,
            "passed": check.passed,
            "total": check.total,
            "build_seconds": round(check.build_seconds, 3),
            "seconds": round(check.seconds, 3),
            "failures": list(check.failures),
        }
    return record


def _human_bytes(n: int | None) -> str:
    from convcli.budget import format_bytes

    return format_bytes(n) if n else "-"
