"""Peak memory of this process: resident set size (the CPU figure) and device memory through NVML.

Training records its peak RSS in train_summary.json; the benchmark and `work.sh --task peft` on a
GPU poll NVML, which sees what the driver hands out (CUDA context and allocator caches included),
so torch and Jittor are measured alike, which neither framework's own counter does. NVML is a
driver library, not a framework, so shared/ may use it.
"""
from __future__ import annotations

import resource
import sys
import threading
import time


def peak_rss_mib() -> float:
    """The largest resident set this process has had, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


class DevicePeakMemory:
    """Peak device memory in use while it runs, polled through NVML every 5 ms (device-wide use
    minus what was in use at the start: each measurement has the GPU alone). Without NVML (a CPU
    machine) `stop_mib` returns None."""

    def __init__(self, index: int = 0):
        self.handle, self.base, self.peak = None, 0, 0
        try:
            import pynvml
            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.read = lambda: pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
            self.base = self.peak = self.read()
        except Exception:  # no NVML (CPU runs): no figure
            self.handle = None
            return
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self.read())
            time.sleep(0.005)

    def stop_mib(self):
        if self.handle is None:
            return None
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.read())
        return (self.peak - self.base) / 2 ** 20
