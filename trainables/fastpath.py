"""The path a model's forward and backward run on, and timing without stalling a GPU.

``FastPath``: bf16 autocast or fp32, channels_last or contiguous tensors, eager or compiled
(torch.compile, the training steps only); ``fast_path`` resolves TrainConfig's "auto" per device
and model (measured by bench/train_step.py). ``AugmentClock``:
the augmentation's share of an epoch, timed with CUDA events on a GPU (no host synchronisation
inside the batch loop).
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables.flags import flag
from trainables.models import card

PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
COMPILES = ("auto", "on", "off")
# "auto" compiles the training steps of the models whose ModelCard says compiling pays, in fp32
# on a CPU, where bench/train_step.py measured torch.compile faster (2-core AVX2-only CPU, one
# thread, batch 64 and 128, flips: ResNet18 width 16 1.20-1.21x, Inception width 8
# 1.32-1.43x; the CNN 0.93x, so not it) ... on training sets of at least this many images,
# whose epochs repay the compilation: 40 s (ResNet18) to 160 s (Inception) once per process
# and batch size on a cold cache, about a second on a warm one (torch keeps compiled graphs on
# disk), where an epoch of the seed's 27,000 images takes 80-100 s. The training set, not the
# run's length, decides, so that the trials of a grid, whatever their epochs, run alike and
# share their trunks.
COMPILE_MIN_IMAGES = 10_000


@dataclass(frozen=True)
class FastPath:
    """How the model's forward and backward run: in bf16 (autocast: convolutions and matrix
    products in bf16, accumulation, loss and softmax in fp32) or fp32, on channels_last or
    contiguous tensors."""

    precision: str = "fp32"
    channels_last: bool = False
    compiled: bool = False  # the training steps under torch.compile (evaluation stays eager)

    def __str__(self) -> str:
        return (f"{self.precision}, {'channels_last' if self.channels_last else 'contiguous'}"
                + (", compiled" if self.compiled else ""))

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


FP32 = FastPath()  # the plain path: fp32, contiguous (NCHW), eager


@dataclass(frozen=True)
class FastPathFlags:
    """The fast path's flags, for every command that trains (its options take each with
    trainables/flags.py ``like``)."""

    precision: str = flag("auto", choices=PRECISIONS, help="bf16 autocast or fp32; auto: bf16 "
                          "where the device has it natively (default auto)")
    memory_format: str = flag("auto", choices=MEMORY_FORMATS,
                              help="auto: channels_last (default auto)")
    compile: str = flag("auto", choices=COMPILES, help="torch.compile the training steps; auto: "
                        "where measured faster (ResNet18 and Inception in fp32 on a CPU, "
                        "training sets of 10,000 images or more; default auto)")


# CUDA computes bf16 in its tensor cores from compute capability 8.0 (Ampere) on; older GPUs
# (Volta 7.0, Turing 7.5, Pascal 6.x) run it emulated, slower than fp32, although
# torch.cuda.is_bf16_supported() says yes for them (its default counts emulation).
CUDA_NATIVE_BF16 = (8, 0)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware: a CUDA GPU of compute capability 8.0 or
    more, or a CPU whose oneDNN kernels have bf16 instructions (AVX512-BF16 or AMX on x86, BF16
    on Arm). Elsewhere bf16 is emulated, and slower than fp32."""
    if device.type == "cuda":
        return tuple(torch.cuda.get_device_capability(device)) >= CUDA_NATIVE_BF16
    return torch.backends.mkldnn.is_available() and \
        bool({"avx512_bf16", "amx_bf16", "bf16"} & _cpu_flags())


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's flags, read once per process (every checkpoint an inference loads asks)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def compiler() -> str | None:
    """The C++ compiler torch.compile's CPU code needs ($CXX, else g++ or clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def fast_path(precision: str, memory_format: str, device: torch.device, compile_: str = "off",
              model: str | None = None, train_images: int = 0) -> FastPath:
    """Resolve "auto": bf16 where the device has it natively; channels_last on CUDA and with
    bf16 (measured by bench/train_step.py: on a 2-core AVX512-BF16 CPU, 1.7-2.0x fp32 NCHW for
    the three models; on CUDA the engine has run bf16 channels_last from the start), contiguous
    NCHW for fp32 on a CPU: there PyTorch 2.14.1's channels_last backward crashed (SIGSEGV) on
    an AVX2-only CPU for ResNet18 at width 4 (at width 16 it did not; the cause is not known).
    torch.compile where it pays (the model's card, COMPILE_MIN_IMAGES: ``train_images`` is the
    run's training set, an epoch's images) and a C++ compiler is there; not measured with
    bf16 or on CUDA, where "auto" stays eager (bench/gpu_check.sh measures the GPU's)."""
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    if memory_format == "auto":
        channels_last = device.type == "cuda" or precision == "bf16"
    else:
        channels_last = memory_format == "channels_last"
    if compile_ == "auto":
        compiled = (device.type == "cpu" and precision == "fp32" and compile_pays(model)
                    and train_images >= COMPILE_MIN_IMAGES and compiler() is not None)
    else:
        compiled = compile_ == "on"
    return FastPath(precision, channels_last, compiled)


def compile_pays(model: str | None) -> bool:
    """Whether torch.compile pays for ``model`` (its ModelCard; no model: no)."""
    return model is not None and card(model).compile_pays


class AugmentClock:
    """The time spent in augmentation, without stalling a GPU: on CUDA a pair of events per
    batch, read once at the end of the epoch (no host synchronisation in the batch loop); on
    the CPU, whose operations finish before they return, the wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        # the training device's stream, not the current device's: with --device cuda:1 the
        # events must sit between that device's kernels
        self.stream = torch.cuda.current_stream(device) if self.cuda else None
        self.events: list = []
        self.seconds = 0.0

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(self.stream)
            return event
        return time.perf_counter()

    def stop(self, began) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record(self.stream)
            self.events.append((began, end))
        else:
            self.seconds += time.perf_counter() - began

    def total(self) -> float:
        """Seconds in all; call after the epoch's one synchronisation."""
        return self.seconds + sum(a.elapsed_time(b) for a, b in self.events) / 1000
