"""Spare cores to the trials left: the CPU of a trial that ended does not stay idle.

On CPUs each trial takes one core and trains on one thread. When ASHA stops a trunk, or the
shorter trials of a grid end, the cores they held go idle while the trials left train on one
thread each: in the standard profile's Inception grid one trial ran alone for 36 of its 55
minutes, one of the two cores doing nothing. Training one trial on two threads is 1.4x to 1.8x as
fast on the 2-core machine (``bench/train_step.py --threads 2``).

``SpareCores`` is Ray Tune's ResourceChangingScheduler around the search's scheduler (ASHA or
none), with one rule (``ShareOfCores``): a trial gets an equal share of the cluster's CPUs among
the trials of the search that have not ended, counting those not created yet (``planned``: a
searcher creates its trials one by one), at least the CPUs it was given, at most one node's, in
whole CPUs. A trial whose share grew is paused at a result whose weights it holds (so that the
checkpoint Tune takes is that epoch's), and Tune restarts it from that checkpoint with the new
bundle; the trial trains on as many threads as it got (trainables/trainable.py
``on_this_worker``). A restart costs the worker's start and, for a compiled model, its
compilation (seconds to a minute), so a trial with fewer than ``MIN_EPOCHS_LEFT`` epochs to go
keeps what it has. A search resumed with a grown trial shrinks it back the same way when more
trials are left than cores. On a cluster the search joined (--address, a Ray Job's), which
other searches may share, the CPUs shared out are those its running trials hold and those
free at that result, never the cluster's total: a core another search's trial holds, or
took as it was freed, is not spare.

Only for CPU trials whose CPUs are "auto" (the default): a given ``--cpus-per-trial`` is kept,
and GPU trials (a share of a GPU each) are left as they are. Ray cannot reuse a worker for a
trial of another size, so a search that spares cores does not reuse actors.

The thread count changes the order of some floating-point sums, so a trial that grew is not
bit-for-bit the run it would have been on one thread, and when it grows depends on when the
others ended: a run is reproducible to the bit only with ``--cpus-per-trial 1``. Every result
says the threads it trained on (``threads``, an MLflow metric per epoch).
"""

from __future__ import annotations

import math

import ray
from ray.tune import PlacementGroupFactory
from ray.tune.experiment import Trial
from ray.tune.result import SHOULD_CHECKPOINT
from ray.tune.schedulers import ResourceChangingScheduler

from trainables.trainable import TIME_ATTR

MIN_EPOCHS_LEFT = 3  # fewer to go: a restart would cost about what a second thread saves


class ShareOfCores:
    """ResourceChangingScheduler's resources_allocation_function: the trial's bundle when its
    share of the cluster's CPUs is not the one it holds, else None. The cluster is read at each
    result (a resumed search may run on another one)."""

    def __init__(self, cpus: float, planned: int, shared: bool = False):
        self.cpus = cpus  # what every trial was given
        self.planned = planned  # the search's trials, created or not
        self.shared = shared  # a cluster others use too (search/cluster.py joined)

    @staticmethod
    def cluster() -> tuple[float, float]:
        """The cluster's CPUs and the most CPUs any live node has (a bundle fits on one)."""
        nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        return ray.cluster_resources().get("CPU", 0), max(nodes, default=0)

    @staticmethod
    def free() -> float:
        """The cluster's CPUs that nothing holds now."""
        return ray.available_resources().get("CPU", 0)

    def room(self, tune_controller) -> tuple[float, float]:
        """The CPUs this search may share among its trials, and the largest node's: the
        cluster's, or on a shared cluster what its running trials hold and what is free (the
        cores another search's trials hold, or will take as they are freed, are not spare)."""
        total, largest = self.cluster()
        if not self.shared:
            return total, largest
        held = sum(t.placement_group_factory.required_resources.get("CPU", 0)
                   for t in tune_controller.get_trials() if t.status == Trial.RUNNING)
        return min(total, held + self.free()), largest

    def share(self, unfinished: int, cluster_cpus: float, largest_node: float) -> float:
        even = math.floor(cluster_cpus / max(1, unfinished))
        return float(max(self.cpus, min(largest_node, even)))

    def __call__(self, tune_controller, trial: Trial, result: dict, scheduler):
        if not result.get(SHOULD_CHECKPOINT):  # its weights are not this epoch's
            return None
        epochs = int(trial.config.get("epochs", 0))
        if epochs - int(result.get(TIME_ATTR, 0)) < MIN_EPOCHS_LEFT:
            return None
        ended = sum(t.status in (Trial.TERMINATED, Trial.ERROR)
                    for t in tune_controller.get_trials())
        want = self.share(self.planned - ended, *self.room(tune_controller))
        have = trial.placement_group_factory.required_resources.get("CPU", 0)
        if want == have:
            return None
        return PlacementGroupFactory([{"CPU": want}])


class SpareCores(ResourceChangingScheduler):
    """The search's scheduler (``base``: ASHA, or None for none) with ShareOfCores. Ray's
    version refuses a trial whose bundle is not the first added trial's; a resumed search
    brings back trials that had grown, so every trial is taken (ShareOfCores needs no base)."""

    def __init__(self, base, cpus: float, planned: int, shared: bool = False):
        super().__init__(base_scheduler=base,
                         resources_allocation_function=ShareOfCores(cpus, planned, shared))

    def on_trial_add(self, tune_controller, trial: Trial, **kwargs):
        return self._base_scheduler.on_trial_add(tune_controller, trial, **kwargs)


def spare_cores(scheduler, resources: tuple[float, float], cpus_auto: bool, planned: int,
                cluster_cpus: float, shared: bool = False):
    """The scheduler to give Tune: SpareCores around ``scheduler`` for CPU trials with "auto"
    CPUs on a cluster with cores to spare, else ``scheduler`` itself. ``shared``: a cluster
    other searches may use (one joined, not started by this process)."""
    cpus, gpus = resources
    if not cpus_auto or gpus > 0 or cluster_cpus < 2 * cpus:
        return scheduler
    return SpareCores(scheduler, cpus, planned, shared)
