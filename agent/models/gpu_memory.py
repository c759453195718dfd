"""GPU memory through NVML (``nvidia-ml-py``): the node's GPUs and what given processes hold.

Both answer "unknown" (an empty list, None) where NVML does not: no driver, no GPU, a container
without the device.
"""

from __future__ import annotations

import contextlib


def nvml_gpus() -> list[tuple[str, int, int]]:
    """(index, total MiB, free MiB) per GPU; [] where NVML does not answer."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            mem = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
            out.append((str(i), int(mem.total) // 2**20, int(mem.free) // 2**20))
        return out
    except Exception:
        return []
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def nvml_used_by(pids: set[int]) -> int | None:
    """MiB of GPU memory NVML attributes to ``pids`` (host pids); None where NVML cannot tell."""
    if not pids:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        used, seen = 0, False
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory:
                    used += int(proc.usedGpuMemory) // 2**20
                    seen = True
        return used if seen else None
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
