"""The path a model's forward and backward run on, and timing without stalling a GPU.

``FastPath``: bf16 autocast or fp32, channels_last or contiguous tensors; ``fast_path``
resolves TrainConfig's "auto" per device (measured by bench/train_step.py). ``AugmentClock``:
the augmentation's share of an epoch, timed with CUDA events on a GPU (no host synchronisation
inside the batch loop).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


@dataclass(frozen=True)
class FastPath:
    """How the model's forward and backward run: in bf16 (autocast: convolutions and matrix
    products in bf16, accumulation, loss and softmax in fp32) or fp32, on channels_last or
    contiguous tensors."""

    precision: str = "fp32"
    channels_last: bool = False

    def __str__(self) -> str:
        return f"{self.precision}, {'channels_last' if self.channels_last else 'contiguous'}"

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


FP32 = FastPath()  # the plain path: fp32, contiguous (NCHW)


def add_fast_path_args(parser) -> None:
    """--precision and --memory-format, for every command that trains."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="bf16 autocast or fp32; auto: bf16 where the device has it "
                             "natively (default auto)")
    parser.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                        help="auto: channels_last (default auto)")


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware: a CUDA GPU that supports it, or a CPU
    whose oneDNN kernels have bf16 instructions (AVX512-BF16 or AMX on x86, BF16 on Arm).
    Elsewhere bf16 is emulated, and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and \
        bool({"avx512_bf16", "amx_bf16", "bf16"} & _cpu_flags())


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's flags, read once per process (every checkpoint an inference loads asks)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def fast_path(precision: str, memory_format: str, device: torch.device) -> FastPath:
    """Resolve "auto": bf16 where the device has it natively; channels_last on CUDA and with
    bf16 (measured by bench/train_step.py: on a 2-core AVX512-BF16 CPU, 1.7-2.0x fp32 NCHW for
    the three models; on CUDA the engine has run bf16 channels_last from the start), contiguous
    NCHW for fp32 on a CPU: there PyTorch 2.14.1's channels_last backward crashed (SIGSEGV) on
    an AVX2-only CPU for ResNet18 at width 4 (at width 16 it did not; the cause is not known)."""
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    if memory_format == "auto":
        channels_last = device.type == "cuda" or precision == "bf16"
    else:
        channels_last = memory_format == "channels_last"
    return FastPath(precision, channels_last)


class AugmentClock:
    """The time spent in augmentation, without stalling a GPU: on CUDA a pair of events per
    batch, read once at the end of the epoch (no host synchronisation in the batch loop); on
    the CPU, whose operations finish before they return, the wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events: list = []
        self.seconds = 0.0

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, began) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((began, end))
        else:
            self.seconds += time.perf_counter() - began

    def total(self) -> float:
        """Seconds in all; call after the epoch's one synchronisation."""
        return self.seconds + sum(a.elapsed_time(b) for a, b in self.events) / 1000
