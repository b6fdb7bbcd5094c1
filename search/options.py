"""What every search command takes and checks before anything starts or is recorded.

``SearchOptions`` is the typed form of the flags every search shares (experiment, resources,
data), and their one definition: each command's parser is derived from its class
(trainables/flags.py). Each experiment kind extends it (search/grid.py ``GridOptions``, ...).
``main(argv)`` parses into it, ``run(options)`` runs, so the pipeline (tunefuse/pipeline.py)
hands a stage its options without forwarding flags by hand.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
from dataclasses import dataclass, fields

from search.budget import duration
from search.profiles import PROFILES, Profile
from search.workspace import WorkspaceError
from trainables.config import ConfigError, TrainConfig, check_batch, check_compiler
from trainables.data import DataError, DataOptions, load_split
from trainables.fastpath import FastPathFlags
from trainables.flags import flag, like
from trainables.models import aliases, card, list_models
from trainables.schedule import ScheduleFlags

AUTO = "auto"
PROFILE_TRAIN_SIZE = -1  # --train-size not given: the profile's (None, from "all", is all)
ALIASES = aliases()  # --model resnet, as the seed calls it: the models' cards say
# every search's schedule unless --schedule says otherwise: wsd, whose trials of different lengths
# share their stable phase, matched or beat cosine on the quick profile (docs/benchmarks.md)
DEFAULT_SCHEDULE = "wsd"


class UsageError(Exception):
    """Bad arguments found after parsing; one line, exit 2."""


# What a search refuses before anything starts or is recorded: one line, exit 2.
REFUSED = (UsageError, ConfigError, DataError, WorkspaceError)


def resource_arg(text: str) -> float | str:
    """An argparse type: "auto" or a number."""
    if text == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number, got {text!r}") from None


def model_choices() -> list[str]:
    """--model's choices, asked of the registry when a parser is built: the models and their
    aliases."""
    return list_models() + sorted(aliases())


@dataclass(frozen=True)
class SearchOptions(DataOptions):
    """The flags every search shares, typed, each field with its flag; each kind's options
    extend it, and its parser (trainables/flags.py ``parser_for``) lists the kind's own flags
    first."""

    profile: str = flag("quick", group="experiment", choices=lambda: tuple(PROFILES),
                        help="preset grid, subset and widths (default %(default)s)")
    name: str | None = flag(None, group="experiment", help="experiment name")
    resume: bool = flag(False, group="experiment", action="store_true",
                        help="continue an interrupted experiment of this name")
    workspace: str = flag("outputs", group="experiment", help="folder for everything written")
    tracking_uri: str | None = flag(None, group="experiment",
                                    help="MLflow tracking URI (default sqlite in workspace)")
    storage_path: str | None = flag(None, group="experiment",
                                    help="Ray Tune results (default WORKSPACE/ray_results)")
    max_failures: int = flag(1, group="experiment", type=int, help="retries of a failing trial "
                             "before it is recorded as failed")
    time_budget: float | None = flag(None, group="experiment", type=duration, help=(
        "e.g. 25m, 2h, 1h30m: train what of the profile's space fits, planned from this "
        "machine's measured speed (search/budget.py)"))
    # a number, or "auto" (search/cluster.py resources)
    cpus_per_trial: float | str = flag(AUTO, group="resources", type=resource_arg, help=(
        "CPUs each trial takes (default auto: 1, or a GPU's share of the CPUs when trials run "
        "on GPUs)"))
    gpus_per_trial: float | str = flag(AUTO, group="resources", type=resource_arg, help=(
        "GPUs each trial takes; fractions pack trials on one GPU, e.g. 0.25 (default auto: a "
        "quarter of a GPU when the cluster has GPUs, else 0)"))
    max_concurrent: int = flag(0, group="resources", type=int, help="0: as resources allow")
    address: str | None = flag(None, group="resources", help=(
        "join a Ray cluster (auto, HOST:6379); default: the one $RAY_ADDRESS names (a Ray "
        "Job's own), else a local cluster of its own"))
    num_cpus: int | None = flag(None, group="resources", type=int,
                                help="CPUs of the local cluster (default all)")
    dashboard_port: int = flag(8265, group="resources", type=int)
    no_dashboard: bool = flag(False, group="resources", action="store_true", help=(
        "start the local cluster without Ray's dashboard (a process and a few seconds less: "
        "headless and scripted runs)"))
    precision: str = like(FastPathFlags, "precision", group="resources")
    memory_format: str = like(FastPathFlags, "memory_format", group="resources")
    compile: str = like(FastPathFlags, "compile", group="resources")
    schedule: str = like(ScheduleFlags, "schedule", DEFAULT_SCHEDULE, group="schedule")
    decay_fraction: float = like(ScheduleFlags, "decay_fraction", group="schedule")
    decay_shape: str = like(ScheduleFlags, "decay_shape", group="schedule")
    train_size: int | None = like(DataOptions, "train_size", PROFILE_TRAIN_SIZE, help=(
        "labelled images to use, split 9:1 into train/val, or 'all' (default: the profile's)"))


def name_flag(default: str):
    """--name, its default said as ``default`` (each kind names its searches)."""
    return like(SearchOptions, "name", help=f"experiment name (default {default})")


def model_flag(default: str):
    """--model, required on the command line; ``default``: the options' without it."""
    return flag(default, required=True, choices=model_choices)


def for_stage(cls, options, **given):
    """A search's options as a pipeline stage runs it: every flag the searches share, as the
    pipeline got it (a new shared flag reaches the stages with no code elsewhere), and
    ``given`` (the stage's model, name, ...)."""
    shared = {f.name: getattr(options, f.name) for f in fields(SearchOptions)}
    return cls(**{**shared, **given})


def train_size(options, profile: Profile) -> int | None:
    """The labelled images a search uses: --train-size (a number, or None for all), else the
    profile's."""
    return profile.train_size if options.train_size == PROFILE_TRAIN_SIZE else \
        options.train_size


def load_data(options):
    """The split a search trains on: --data-dir, --train-size (else the profile's), --seed."""
    return load_split(options.data_dir, train_size(options, PROFILES[options.profile]),
                      options.seed, options.download)


def check_resources(options) -> None:
    """Resource and cluster flags no trial could ever run with, refused before anything starts
    or is recorded: Tune itself waits for ever for resources the cluster lacks (it only warns
    every 60 s), and Ray waits minutes for an address that does not answer. --compile on
    without a C++ compiler too: every trial would fail at its start."""
    if options.compile == "on":
        check_compiler()
    cpus = 1.0 if options.cpus_per_trial == AUTO else options.cpus_per_trial
    gpus = 0.0 if options.gpus_per_trial == AUTO else options.gpus_per_trial
    if not (math.isfinite(cpus) and cpus > 0):
        raise UsageError(f"--cpus-per-trial must be above 0, got {cpus:g}; e.g. 1, or 0.5 for "
                         "two trials per CPU")
    if not (math.isfinite(gpus) and gpus >= 0):
        raise UsageError(f"--gpus-per-trial must be 0 or more, got {gpus:g}")
    if gpus > 1 and gpus != int(gpus):
        raise UsageError(f"--gpus-per-trial {gpus:g}: above 1 a trial takes whole GPUs; use a "
                         "fraction of one (e.g. 0.5) or a whole number")
    if options.num_cpus is not None and options.num_cpus < 1:
        raise UsageError(f"--num-cpus must be at least 1, got {options.num_cpus}")
    if options.max_concurrent < 0:
        raise UsageError(f"--max-concurrent must be 0 (as resources allow) or more, got "
                         f"{options.max_concurrent}")
    if options.max_failures < -1:
        raise UsageError(f"--max-failures must be -1 (retry for ever) or more, got "
                         f"{options.max_failures}")
    if not 0 <= options.dashboard_port <= 65535:
        raise UsageError(f"--dashboard-port must be a port number, 0..65535, got "
                         f"{options.dashboard_port}")
    if address := cluster_address(options):
        source = "--address" if options.address else "$RAY_ADDRESS"
        if options.no_dashboard:
            raise UsageError(f"--no-dashboard is for the local cluster; a cluster joined with "
                             f"{source} keeps its own (drop --no-dashboard)")
        check_address(address, source)
        return
    have = options.num_cpus or os.cpu_count() or 1
    if cpus > have:
        raise UsageError(f"--cpus-per-trial {cpus:g} is more than the {have} CPUs of the local "
                         "cluster; lower it" + (" or raise --num-cpus" if options.num_cpus
                                                else ""))
    if gpus > 0:
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if math.ceil(gpus) > have:
            raise UsageError(f"--gpus-per-trial {gpus:g} needs a GPU, and this machine has "
                             f"{have or 'none'} that CUDA can use; drop --gpus-per-trial, or "
                             "join a cluster with GPUs (--address)")


def cluster_address(options) -> str | None:
    """The Ray cluster a command joins: --address; else $RAY_ADDRESS, which Ray Jobs sets to
    the cluster's own address for the driver of a job (so a search submitted as a job runs on
    that cluster, not on a second one it would start inside the job); else None, a local
    cluster of the command's own. $RAY_ADDRESS set to the Jobs API's http:// address (what
    `ray job submit` reads) names no cluster to join: refused, saying what to do."""
    if options.address:
        return options.address
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env.startswith(("http://", "https://")):
        raise UsageError(f"$RAY_ADDRESS is {env}, the address of a Ray cluster's Jobs API, "
                         "not of the cluster: submit this command as a job (`ray job submit "
                         "--working-dir . -- python -m ...`, docs/cluster.md), join the "
                         "cluster with --address auto or HOST:6379, or unset RAY_ADDRESS for a "
                         "local cluster")
    return env or None


def check_address(address: str, source: str = "--address") -> None:
    """A HOST:PORT that accepts no connection, in seconds not minutes; Ray Client (ray://)
    refused: Ray's docs advise against it for long-running Tune drivers, and no test ran a
    search through it; a Ray Job runs the driver on the cluster instead."""
    if address == "auto":  # Ray says at once when no cluster runs here
        return
    if address.startswith("ray://"):
        raise UsageError(f"{source} {address}: Ray Client (ray://) is not supported for "
                         "searches; submit the command as a Ray Job instead (`ray job submit "
                         "--address http://HEAD:8265 --working-dir . -- python -m ...`, "
                         "docs/cluster.md)")
    host, sep, port = address.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"{source} {address!r} is not auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise UsageError(f"no Ray cluster answers at {address} ({e.strerror or e}); start it "
                         f"(`ray start --head`) or fix {source}") from None


def check_resume(what: str, name: str, exists: bool, resume: bool, root) -> None:
    """The one rule of --resume: it continues an existing NAME; without it, NAME must be new."""
    if resume and not exists:
        raise UsageError(f"no {what} named {name!r} in {root} to resume; drop --resume to "
                         "start it")
    if not resume and exists:
        raise UsageError(f"{what} {name!r} already exists in {root}; pass --resume to continue "
                         "it or --name for a new one")


def check_warmup(epochs: int, warmup: int) -> None:
    """A trial runs its warm-up whole: no fewer epochs than that."""
    if epochs < warmup:
        raise ConfigError(f"epochs {epochs} is fewer than the {warmup} warm-up epochs; raise "
                          "--epochs or lower --warmup-epochs")


def check_width(model: str, width: int | None) -> None:
    if width is not None and not card(model).takes_width:
        raise ConfigError(f"the {model} has a fixed width; drop --width")


def check_trial(model: str, batch_size: int, epochs: int, warmup: int, width: int | None,
                train_images: int, batch_flag: str) -> None:
    """A trial of these settings could run: its batch fits the training set (else: lower
    ``batch_flag``), its epochs hold the warm-up, and only models with a width get one."""
    check_batch(batch_size, train_images, f"lower {batch_flag}")
    check_warmup(epochs, warmup)
    check_width(model, width)


def base_config(options: SearchOptions, model: str, width: int | None, warmup: int,
                **fields) -> TrainConfig:
    """A search's trial config before its search space: the model, the profile's augmentation,
    the resources; ``fields`` sets the rest (batch size, epochs, ...)."""
    cpus, gpus = options.cpus_per_trial, options.gpus_per_trial
    return TrainConfig(
        model=model, model_kwargs={"width": width} if width else {}, warmup_epochs=warmup,
        seed=options.seed, augment=PROFILES[options.profile].augment.get(model, "auto"),
        # "auto": what the trial's worker was given (trainables/trainable.py)
        num_threads=None if cpus == AUTO else max(1, int(cpus)),
        device="auto" if gpus == AUTO else "cuda" if gpus > 0 else "cpu",
        precision=options.precision, memory_format=options.memory_format,
        compile=options.compile, schedule=options.schedule, decay_fraction=options.decay_fraction,
        decay_shape=options.decay_shape, **fields)
