"""One experiment, run by a worker: claim it, train the pair, write what a user reads.

SQL gets a write per sample point (curve points, layer statistics, progress) and at the end
(results, checkpoints). The trainer's whole state is saved at every sample point too, so a job
delivered again after its worker died resumes from there instead of starting over.

The job owns the experiment through a lease (bnlab/store/leases.py): every write renews it in
the same transaction, and fails with `LeaseLost` when another worker took the experiment over;
the job then stops without writing anything more. Writes are retried while the database is
briefly unreachable (bnlab/store/retry.py). The job stops at the next sample point when a user
cancels it, when it lost its lease, or when its worker shuts down (it then hands the experiment
back to the queue, where the next worker resumes it).
"""

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bnlab.models.checkpoint import load_state, save_net, save_state
from bnlab.models.data import DataUnavailable, Splits, load_splits
from bnlab.models.device import DeviceUnavailable, resolve_device
from bnlab.models.inference import accuracy
from bnlab.models.trainer import Sample, Trainer, paired_trainer
from bnlab.models.trainer import first_step_reaching as first_step
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store import leases, queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.leases import Lease, LeaseLost
from bnlab.store.retry import in_transaction, is_transient
from bnlab.store.tables import VARIANTS, utc_now
from bnlab.worker.layer_rows import layer_rows
from bnlab.worker.lease import LeaseKeeper

log = logging.getLogger(__name__)
# Errors whose message is already a reason a person can act on.
EXPECTED_ERRORS = (DataUnavailable, DeviceUnavailable, ValueError)

T = TypeVar("T")
# A net's checkpoint as written: path, sha256, size in bytes.
SavedNet = tuple[Path, str, int]


class ExperimentJob:
    def __init__(
        self,
        experiment_id: int,
        settings: Settings,
        worker: str,
        shutting_down: Callable[[], bool] = lambda: False,
        hand_back: Callable[[int, str], None] | None = None,
    ) -> None:
        """`worker` names the worker in the experiment's row; `shutting_down` says its worker
        is stopping; `hand_back(id, queue)` queues a message for a handed-back experiment."""
        self.experiment_id = experiment_id
        self.settings = settings
        self.worker = worker
        self.shutting_down = shutting_down
        self.hand_back = hand_back
        self.sessions = make_sessionmaker(settings.database_url)
        self.folder = settings.checkpoint_dir / f"experiment-{experiment_id}"
        self.state_path = self.folder / "training-state.safetensors"

    def run(self) -> None:
        claimed = self._claim()
        if claimed is None:
            return
        self.lease, spec, queue = claimed
        with LeaseKeeper(self.sessions, self.lease, self.settings.worker_heartbeat_seconds) as kept:
            self.keeper = kept
            try:
                self._train(spec, queue)
            except LeaseLost as lost:
                log.warning("%s; this worker stops and writes nothing more", lost)
            except EXPECTED_ERRORS as error:
                self._fail(str(error))
            except DBAPIError as error:
                if not is_transient(error):
                    raise
                # Not the experiment's fault: its heartbeat stops, the reaper queues it again
                # and a worker resumes it from its last sample point.
                log.error("experiment %s: database unreachable for too long", self.experiment_id)
            except Exception as error:
                log.exception("experiment %s failed", self.experiment_id)
                self._fail(f"internal error: {type(error).__name__}: {error}")

    def _claim(self) -> tuple[Lease, ExperimentSpec, str] | None:
        """The lease, the spec and the queue; None if the job is not this delivery's to run."""
        stale_before = utc_now() - timedelta(seconds=self.settings.lease_timeout)

        def claim(session: Session) -> tuple[Lease, ExperimentSpec, str] | str:
            lease = leases.claim(
                session,
                self.experiment_id,
                self.worker,
                stale_before,
                self.settings.max_worker_losses,
            )
            experiment = queries.get_experiment(session, self.experiment_id)
            if experiment is None:
                return "it does not exist (deleted?)"
            if lease is None:
                status, worker = experiment.status, experiment.worker
                return f"it is {status} (worker {worker}); this delivery is a duplicate"
            try:
                spec = ExperimentSpec.model_validate(experiment.spec)
            except ValidationError as error:
                # Failed now, with the reason: else every worker the reaper hands it to crashes.
                experiment.status, experiment.finished_at = "failed", utc_now()
                experiment.error = f"its stored spec is not valid for this bnlab: {error}"
                return "its stored spec is not valid; it failed"
            return lease, spec, experiment.queue

        claimed = in_transaction(self.sessions, claim, self.settings.database_retry_seconds)
        if isinstance(claimed, str):
            log.info("experiment %s not taken: %s", self.experiment_id, claimed)
            return None
        log.info("experiment %s taken with lease %d", self.experiment_id, claimed[0].token)
        return claimed

    def _write(self, work: Callable[[Session], T]) -> T:
        """`work` in one transaction that renews this job's lease first (or raises LeaseLost),
        rerun while the database is unreachable."""

        def fenced(session: Session) -> T:
            self.keeper.renewed(leases.hold(session, self.lease))
            return work(session)

        return in_transaction(self.sessions, fenced, self.settings.database_retry_seconds)

    def _train(self, spec: ExperimentSpec, queue: str) -> None:
        device = resolve_device("cuda" if spec.device == "gpu" else "cpu")
        splits = load_splits(
            spec.dataset, self.settings.data_dir, self.settings.download, spec.validation_size
        )
        trainer = paired_trainer(
            spec.architecture(), spec.training(), splits, device, self.settings.bn_impl
        )
        if self.state_path.exists():
            trainer.restore(*load_state(self.state_path))
            self._write(lambda session: self._forget_after(session, trainer.step))
            log.info("experiment %s resumes at step %d", self.experiment_id, trainer.step)
        progress = _Progress(trainer.step)

        def on_sample(sample: Sample) -> None:
            rates = progress.update(sample.step, spec.training_batches)
            self._write(lambda session: self._record_sample(session, sample, rates))
            save_state(self.state_path, *trainer.state())

        if trainer.run(on_sample, self._should_stop) == "cancelled":
            self._stop(queue)
            return
        self._finish(spec, trainer, splits)

    def _should_stop(self) -> bool:
        return self.keeper.lost.is_set() or self.keeper.cancel_requested or self.shutting_down()

    def _stop(self, queue: str) -> None:
        """The trainer stopped early: say why in the row (or, if the lease is gone, nowhere)."""
        if self.keeper.lost.is_set():
            raise self.lease.lost()
        if self.keeper.cancel_requested:
            self._write(self._cancelled)
            self.state_path.unlink(missing_ok=True)  # never resumed: its curve is what stays
            log.info("experiment %s cancelled", self.experiment_id)
            return
        # The worker is shutting down: the state file of the last sample point stays, and so
        # does the curve; the next worker to take the experiment resumes it.
        in_transaction(
            self.sessions,
            lambda session: leases.hand_back(session, self.lease),
            self.settings.database_retry_seconds,
        )
        log.info("experiment %s handed back to the %s queue", self.experiment_id, queue)
        if self.hand_back is not None:
            try:
                self.hand_back(self.experiment_id, queue)
            except Exception:  # the broker is down: the reaper queues it once a worker is idle
                log.warning("experiment %s: could not queue it again", self.experiment_id)

    def _forget_after(self, session: Session, step: int) -> None:
        """A resumed job writes the points past its state file's step again."""
        experiment = queries.get_experiment(session, self.experiment_id)
        assert experiment is not None  # the lease holds the row
        queries.drop_curve_after(session, experiment, step)
        experiment.progress_step = step

    def _record_sample(
        self, session: Session, sample: Sample, rates: tuple[float | None, float | None]
    ) -> None:
        experiment = queries.get_experiment(session, self.experiment_id)
        assert experiment is not None
        # Points at this step may be there already: a retried commit whose answer was lost.
        queries.drop_curve_after(session, experiment, sample.step - 1)
        points = {label: (net.val_accuracy, net.train_loss) for label, net in sample.nets.items()}
        queries.add_curve_points(session, experiment, sample.step, points)
        layers = {label: layer_rows(net.layers) for label, net in sample.nets.items()}
        queries.add_layer_stats(session, experiment, sample.step, layers)
        for label, step in sample.diverged_at.items():
            queries.run_of(experiment, label).diverged_at_step = step
        experiment.progress_step = sample.step
        experiment.steps_per_second, experiment.eta_seconds = rates

    def _cancelled(self, session: Session) -> None:
        experiment = queries.get_experiment(session, self.experiment_id)
        assert experiment is not None
        experiment.status, experiment.finished_at = "cancelled", utc_now()

    def _finish(self, spec: ExperimentSpec, trainer: Trainer, splits: Splits) -> None:
        test_accuracies = self._test_accuracies(spec, trainer, splits)
        # A stale job must not even write the files: check the lease right before.
        self._write(lambda session: None)
        saved = {variant: self._save_net(spec, trainer, variant) for variant in VARIANTS}
        self._write(
            lambda session: self._record_results(session, trainer.step, test_accuracies, saved)
        )
        self.state_path.unlink(missing_ok=True)

    def _test_accuracies(
        self, spec: ExperimentSpec, trainer: Trainer, splits: Splits
    ) -> dict[str, tuple[float, float]]:
        """Test accuracy with population and with batch statistics, per net still training."""
        test = splits.test.to(trainer.lanes[0].stack.output_bias.device)
        results = {}
        for lane in trainer.lanes:
            if not lane.active:  # every net of the lane diverged: it has none to test
                continue
            population = accuracy(lane.stack, test, "population")
            batch = accuracy(lane.stack, test, "batch", batch_size=spec.batch_size)
            for index, variant in enumerate(lane.active):
                results[variant] = (population[index], batch[index])
        return results

    def _record_results(
        self,
        session: Session,
        step: int,
        test_accuracies: dict[str, tuple[float, float]],
        saved: dict[str, SavedNet],
    ) -> None:
        experiment = queries.get_experiment(session, self.experiment_id)
        assert experiment is not None
        curves = queries.curve(session, experiment.id)
        for variant, points in curves.items():
            run = queries.run_of(experiment, variant)
            if variant in test_accuracies:
                run.test_accuracy, run.test_accuracy_batch_stats = test_accuracies[variant]
            steps = [p.step for p in points]
            accuracies = [p.val_accuracy for p in points]
            if run.diverged_at_step is None and points:
                run.final_val_accuracy = accuracies[-1]
            run.steps_to_90 = first_step(steps, accuracies, 0.90)
            run.steps_to_95 = first_step(steps, accuracies, 0.95)
            path, sha256, size = saved[variant]
            queries.add_checkpoint(session, run, step, str(path.absolute()), sha256, size)
        experiment.status, experiment.finished_at = "succeeded", utc_now()
        experiment.eta_seconds = 0.0

    def _save_net(self, spec: ExperimentSpec, trainer: Trainer, variant: str) -> SavedNet:
        path = self.folder / f"{variant}.safetensors"
        sha256, size = save_net(
            path,
            trainer.net_state(variant),
            variant=variant,
            arch=spec.architecture(),
            spec=spec.model_dump(),
            step=trainer.step,
            dataset=spec.dataset,
            experiment_id=self.experiment_id,
        )
        return path, sha256, size

    def _fail(self, reason: str) -> None:
        def failed(session: Session) -> None:
            experiment = queries.get_experiment(session, self.experiment_id)
            assert experiment is not None
            experiment.status, experiment.error = "failed", reason
            experiment.finished_at = utc_now()

        try:
            self._write(failed)
        except LeaseLost as lost:
            log.warning("%s; its failure (%s) is not recorded", lost, reason)


class _Progress:
    """Steps per second between sample points, and the time left at that pace."""

    def __init__(self, step: int) -> None:
        self.step, self.time = step, time.monotonic()

    def update(self, step: int, total: int) -> tuple[float | None, float | None]:
        now = time.monotonic()
        if step == self.step or now == self.time:
            return None, None
        rate = (step - self.step) / (now - self.time)
        self.step, self.time = step, now
        return rate, (total - step) / rate
