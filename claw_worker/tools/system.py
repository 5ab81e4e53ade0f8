"""``system_info``: what the agent may know about the machine it runs on.

Deliberately a fixed list of facts (OS, CPUs, load, memory, workspace disk, Python): no
environment, no hostnames of other services, nothing that could carry a secret.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

from claw_worker.tools.base import Tool, ToolContext, ToolParams


class SystemInfoParams(ToolParams):
    pass


def _gib(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB"


def _memory() -> str:
    """Total and available memory from /proc/meminfo (Linux); sysconf elsewhere."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        fields: dict[str, int] = {}
        for line in meminfo.read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[name] = int(parts[0]) * 1024
        if "MemTotal" in fields:
            avail = fields.get("MemAvailable", fields.get("MemFree", 0))
            return f"{_gib(avail)} available of {_gib(fields['MemTotal'])}"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "unknown"
    return f"{_gib(total)} total"


class SystemInfoTool(Tool[SystemInfoParams]):
    name = "system_info"
    description = (
        "Facts about the machine running the agent: OS, CPU count, load average, memory, "
        "free disk space of the workspace and the Python version."
    )
    Params = SystemInfoParams

    def execute(self, params: SystemInfoParams, ctx: ToolContext) -> str:
        try:
            load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
        except (OSError, AttributeError):
            load = "unknown"
        workspace = ctx.workspace if ctx.workspace.exists() else Path.cwd()
        disk = shutil.disk_usage(workspace)
        return "\n".join(
            [
                f"os: {platform.system()} {platform.release()} ({platform.machine()})",
                f"platform: {platform.platform()}",
                f"cpu_count: {os.cpu_count() or 'unknown'}",
                f"load_average (1/5/15 min): {load}",
                f"memory: {_memory()}",
                f"workspace_disk: {_gib(disk.free)} free of {_gib(disk.total)}",
                f"python: {sys.version.split()[0]} ({platform.python_implementation()})",
            ]
        )
