"""A training job, run by a worker: a group of cells (experiments that can share one batch
sequence, bnlab/sweeps.py `stack_key`) trained by one trainer, each cell written as the
experiment it is. A lone experiment is a group of one, through the same code.

Each cell has a `CellRecorder`: it claims the experiment and holds its lease
(bnlab/store/leases.py), and makes every write a user reads: a write per sample point (curve
points, layer statistics, progress) and at the end (results, checkpoints). Every write renews
the lease in the same transaction and fails with `LeaseLost` when another worker took the
experiment over: that cell then leaves the job, writing nothing more, and the others carry on.
Writes are retried while the database is briefly unreachable (bnlab/store/retry.py).

Each cell's training state is saved at every sample point in a file of its own, in a lone
experiment's format, so a job delivered again after its worker died resumes from there instead
of starting over, and so does a cell queued again on its own (the reaper queues experiments one
by one): a group resumes when all its cells' files are at one step, else it starts over.

Object writes cannot be fenced as SQL writes are: a worker cut off mid-upload completes the PUT
when it is back, whatever the lease says by then. So every object a job writes is named by its
lease (`experiment-N/lease-T/...`), and what is read is what SQL names: the nets through their
checkpoint rows, the training state through the row's `state_location` and `state_sha256`, set
in the same fenced write as its sample point. A stale worker's late PUT lands under its own lost
lease's folder, which nothing reads or serves; the job that finishes removes older leases'
folders. What remains possible: a stale upload that lands after that removal leaves an orphan
object there (docs/reliability.md, "Not covered").

Every `keep_states_every`-th sample point's state (and the last one's) is also kept, to fork the
experiment from (bnlab/api/experiments/forks.py): uploaded under `kept/lease-T/`, which the
end-of-job clean-up of older leases' folders leaves alone, and named in `kept_states` in the same
fenced write as its sample point; at the end, kept states that no row names (a stale worker's)
are removed. A fork's job starts from its parent's kept state, unless it saved one of its own.

At a sample point, a cell a user cancelled (or whose lease was taken) leaves the trainer; the
job stops when none is left. When its worker shuts down, the job hands every cell back to the
queue and queues the group again, where the next worker resumes it.
"""

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from bnlab import artifacts
from bnlab.jobs import Enqueue
from bnlab.models.checkpoint import decode_state, load_state, save_net, save_state, sha256
from bnlab.models.data import DataUnavailable, Splits, load_splits
from bnlab.models.device import DeviceUnavailable, resolve_device
from bnlab.models.forks import forked_state
from bnlab.models.trainer import Cell, CellSample, Sample, Trainer, TrainingState, build_trainer
from bnlab.models.trainer import first_step_reaching as first_step
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store import leases, queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.leases import Lease, LeaseLost
from bnlab.store.retry import in_transaction, is_transient
from bnlab.store.tables import Experiment, utc_now
from bnlab.sweeps import stack_key
from bnlab.vocabulary import Queue, Variant
from bnlab.worker.layer_rows import layer_rows
from bnlab.worker.lease import LeaseKeeper
from bnlab.worker.provenance import provenance_of, trained_by
from bnlab.worker.why_rows import why_rows

log = logging.getLogger(__name__)
# Errors whose message is already a reason a person can act on.
EXPECTED_ERRORS = (DataUnavailable, DeviceUnavailable, artifacts.StoreError, ValueError)

T = TypeVar("T")
# A net's checkpoint as written: location (path or URL), sha256, size in bytes.
SavedNet = tuple[str, str, int]
# Steps per second since the last sample point, and the seconds left at that pace.
Rates = tuple[float | None, float | None]


@dataclass(frozen=True)
class Fork:
    """Where a fork starts: its parent (None once deleted) and the parent's sample point."""

    parent_id: int | None
    step: int

    @classmethod
    def of(cls, experiment: Experiment) -> "Fork | None":
        """The experiment's, if it is a fork."""
        if experiment.fork_step is None:
            return None
        return cls(experiment.parent_id, experiment.fork_step)


class CellRecorder:
    """One cell of a training job, as the experiment a user reads: its lease, its row, curve,
    layer statistics, results, checkpoints and state file. Made by `claim`."""

    def __init__(
        self,
        lease: Lease,
        spec: ExperimentSpec,
        queue: Queue,
        settings: Settings,
        sessions: sessionmaker[Session],
        fork: Fork | None = None,
    ) -> None:
        self.lease = lease
        self.spec = spec
        self.queue = queue
        self.settings = settings
        self.sessions = sessions
        self.fork = fork
        self.folder = artifacts.locate(settings.checkpoint_dir, f"experiment-{lease.experiment_id}")
        self.lease_folder = artifacts.locate(self.folder, f"lease-{lease.token}")
        self.kept_folder = artifacts.locate(self.folder, "kept")
        # Where jobs kept the state before lease folders (and before SQL named it).
        self.unnamed_state = artifacts.locate(self.folder, "training-state.safetensors")
        self.state_location: str | None = None  # the state SQL names, as this job last knew it
        # Enter it for the length of the job: it renews the lease between sample points.
        self.keeper = LeaseKeeper(sessions, lease, settings.worker_heartbeat_seconds)

    @classmethod
    def claim(
        cls, experiment_id: int, settings: Settings, worker: str, sessions: sessionmaker[Session]
    ) -> "CellRecorder | None":
        """The experiment's recorder, its lease taken by `worker`; None if this delivery is not
        the one to run it (it is finished, or alive on another worker, or gone)."""
        stale_before = utc_now() - timedelta(seconds=settings.lease_timeout)

        def claim(session: Session) -> CellRecorder | str:
            lease = leases.claim(
                session, experiment_id, worker, stale_before, settings.max_worker_losses
            )
            experiment = queries.get_experiment(session, experiment_id)
            if experiment is None:
                return "it does not exist (deleted?)"
            if lease is None:
                status, worker_now = experiment.status, experiment.worker
                return f"it is {status} (worker {worker_now}); this delivery is a duplicate"
            try:
                spec = ExperimentSpec.model_validate(experiment.spec)
            except ValidationError as error:
                # Failed now, with the reason: else every worker the reaper hands it to crashes.
                experiment.status, experiment.finished_at = "failed", utc_now()
                experiment.error = f"its stored spec is not valid for this bnlab: {error}"
                return "its stored spec is not valid; it failed"
            return cls(lease, spec, experiment.queue, settings, sessions, Fork.of(experiment))

        claimed = in_transaction(sessions, claim, settings.database_retry_seconds)
        if isinstance(claimed, str):
            log.info("experiment %s not taken: %s", experiment_id, claimed)
            return None
        log.info("experiment %s taken with lease %d", experiment_id, claimed.lease.token)
        return claimed

    @property
    def experiment_id(self) -> int:
        return self.lease.experiment_id

    @property
    def name(self) -> str:
        """The cell's name in the trainer."""
        return str(self.experiment_id)

    @property
    def lost(self) -> bool:
        """Another worker took the experiment over: this one writes nothing more for it."""
        return self.keeper.lost.is_set()

    @property
    def leaving(self) -> bool:
        """It leaves the trainer at this sample point: cancelled by a user, or lost."""
        return self.lost or self.keeper.cancel_requested

    def saved_state(self) -> TrainingState | None:
        """The training state of its last sample point, if a job saved one: the one its row
        names, checked against the row's sha256; for a job older than that, the one at the old
        path. Else where it starts (`start`). It starts over, rather than failing, when its
        state is gone or does not match, because the state is only a shortcut (training is
        reproducible from the spec, or a fork from its parent's kept state: the same curve and
        weights), and a lost shortcut should not cost the experiment."""

        def named(session: Session) -> tuple[str | None, str | None]:
            experiment = self._experiment(session)
            return experiment.state_location, experiment.state_sha256

        location, expected = self._write(named)
        if location is None:
            unnamed = self.unnamed_state
            if self.fork is None and artifacts.exists(unnamed):
                return load_state(unnamed)
            return self.start()
        self.state_location = location
        try:
            data = artifacts.read(location)
        except FileNotFoundError:
            log.warning("experiment %s: its training state is gone; it starts over", self.name)
            return self.start()
        if sha256(data) != expected:
            log.warning(
                "experiment %s: its training state does not match the sha256 its row names; "
                "it starts over",
                self.name,
            )
            return self.start()
        return decode_state(data, location)

    def start(self) -> TrainingState | None:
        """Where it starts: from the spec's initial weights (None), or a fork from its parent's
        state kept at the fork's step, its nets made the fork's variants (`forked_state`). A
        parent's state that is gone or changed fails the fork, saying so: nothing else
        reproduces it."""
        if self.fork is None:
            return None
        parent, step = self.fork.parent_id, self.fork.step
        if parent is None:
            raise ValueError(f"its parent was deleted: it cannot start from its state at {step}")

        def kept(session: Session) -> tuple[str, str] | None:
            row = queries.kept_state(session, parent, step)
            return None if row is None else (row.location, row.sha256)

        named = self._write(kept)
        whose = f"experiment {parent}'s training state kept at step {step}"
        if named is None:
            raise ValueError(f"{whose} is no longer kept (it was trained again since?)")
        location, expected = named
        try:
            data = artifacts.read(location)
        except FileNotFoundError:
            raise ValueError(f"{whose} is gone from {artifacts.shown(location)}") from None
        if sha256(data) != expected:
            raise ValueError(f"{whose} does not match the sha256 its row names")
        parents = decode_state(data, location)
        return forked_state(parents, self.spec.architecture(), self.spec.variants)

    def resume_at(self, step: int) -> None:
        """A resumed job writes the points past its state's step again."""

        def forget(session: Session) -> None:
            experiment = self._experiment(session)
            queries.drop_curve_after(session, experiment, step)
            # Its kept states past `step` stay named: SQL holds only what lease holders wrote,
            # all trained from the same spec (and parent state) as this job trains, so each is a
            # state this training reaches; this job names its own in their place as it gets
            # there (`keep_state`). Forks queued from them meanwhile still start.
            experiment.progress_step = step

        self._write(forget)

    def record(self, step: int, sample: CellSample, rates: Rates, state: TrainingState) -> None:
        """One sample point: curve points, layer statistics, the probes' measurements where they
        ran, divergences, progress, and the training state to resume from there.

        The state is uploaded first, under this lease's folder and a name of its own (its step:
        the state SQL names now is never overwritten), then named in the same fenced write as
        the point's rows: SQL names only whole states of the lease holder, each matching the
        curve it goes with. A kept state is uploaded and named the same way."""
        location = artifacts.locate(self.lease_folder, f"training-state-{step}.safetensors")
        state_sha256, _ = save_state(location, *state)
        kept = self._keep(step, state)

        def write(session: Session) -> None:
            experiment = self._experiment(session)
            # Points at this step may be there already: a retried commit whose answer was lost, or
            # a run started over. Its kept states stay named (see `resume_at`): `keep_state`
            # replaces the one at this step.
            queries.drop_curve_after(session, experiment, step - 1)
            if kept is not None:
                queries.keep_state(session, experiment, step, *kept)
            points = {
                variant: (net.val_accuracy, net.train_loss) for variant, net in sample.nets.items()
            }
            queries.add_curve_points(session, experiment, step, points)
            layers = {variant: layer_rows(net.layers) for variant, net in sample.nets.items()}
            queries.add_layer_stats(session, experiment, step, layers)
            probed = {v: why_rows(net.why) for v, net in sample.nets.items() if net.why}
            queries.add_probe_rows(session, experiment, step, probed)
            for variant, diverged_at in sample.diverged_at.items():
                queries.run_of(experiment, variant).diverged_at_step = diverged_at
            experiment.progress_step = step
            experiment.steps_per_second, experiment.eta_seconds = rates
            experiment.state_location, experiment.state_sha256 = location, state_sha256

        try:
            self._write(write)
        except LeaseLost:
            # named nowhere: not left behind, where it can be helped
            artifacts.delete(location)
            if kept is not None:
                artifacts.delete(kept[0])
            raise
        previous, self.state_location = self.state_location, location
        if previous not in (None, location):
            artifacts.delete(previous)

    def _keep(self, step: int, state: TrainingState) -> tuple[str, str, int] | None:
        """The state at `step` uploaded to be kept, if the spec keeps it: location, sha256,
        size, to name in its sample point's write."""
        if not self.spec.keeps_state(step, 0 if self.fork is None else self.fork.step):
            return None
        name = f"training-state-{step}.safetensors"
        location = artifacts.locate(self.kept_folder, f"lease-{self.lease.token}", name)
        return (location, *save_state(location, *state))

    def cancel(self) -> None:
        """A user cancelled it: marked so, out of the trainer, and never resumed (its curve is
        what stays)."""

        def cancelled(session: Session) -> str | None:
            experiment = self._experiment(session)
            experiment.status, experiment.finished_at = "cancelled", utc_now()
            self._end_kept(session, experiment)
            return self._forget_state(experiment)

        self._clean_up(self._write(cancelled))
        log.info("experiment %s cancelled", self.experiment_id)

    def hand_back(self) -> None:
        """Its worker is shutting down: queued again, its curve and state file kept, for the
        next worker to resume."""
        self._write(lambda session: leases.hand_back(session, self.lease))
        log.info("experiment %s handed back to the %s queue", self.experiment_id, self.queue)

    def finish(
        self, trainer: Trainer, test_accuracies: Mapping[Variant, tuple[float, float]]
    ) -> None:
        """Trained to the end: checkpoints of its nets, results, `succeeded`.
        `test_accuracies`: with population and with batch statistics, per net still training."""
        # A stale job need not even upload them: check the lease right before (one that is
        # lost after this uploads into its own lease's folder, which no row will name).
        self._write(lambda session: None)
        saved = {variant: self._save_net(trainer, variant) for variant in self.spec.variants}
        state = self._write(
            lambda session: self._record_results(session, trainer.step, test_accuracies, saved)
        )
        self._clean_up(state)

    def fail(self, reason: str) -> None:
        def failed(session: Session) -> None:
            experiment = self._experiment(session)
            experiment.status, experiment.error = "failed", reason
            experiment.finished_at = utc_now()
            self._end_kept(session, experiment)

        self._write(failed)

    def note_provenance(self, provenance: dict[str, object]) -> None:
        """What trains it (bnlab/worker/provenance.py), in its row beside what trained it so
        far (a resumed job): bundles carry it."""

        def note(session: Session) -> None:
            experiment = self._experiment(session)
            before, step = experiment.provenance, experiment.progress_step
            experiment.provenance = trained_by(before, provenance, step)

        self._write(note)

    def _write(self, work: Callable[[Session], T]) -> T:
        """`work` in one transaction that renews the lease first (or raises LeaseLost),
        rerun while the database is unreachable."""

        def fenced(session: Session) -> T:
            try:
                self.keeper.renewed(leases.hold(session, self.lease))
            except LeaseLost:
                self.keeper.lost.set()
                raise
            return work(session)

        return in_transaction(self.sessions, fenced, self.settings.database_retry_seconds)

    @staticmethod
    def _forget_state(experiment: Experiment) -> str | None:
        """The experiment will not resume: its row names no state any more. Returns the one it
        named, to delete once this is committed."""
        location = experiment.state_location
        experiment.state_location = experiment.state_sha256 = None
        return location

    @staticmethod
    def _end_kept(session: Session, experiment: Experiment) -> None:
        """It ended before the end: states kept past its last point (by a run it started over
        from) are no longer to be trained again, and have no curve point to fork with."""
        queries.drop_kept_after(session, experiment, experiment.progress_step)

    def _clean_up(self, state: str | None) -> None:
        """After the end (committed): the state, the state at the old path, and every other
        lease's folder (a stale worker's uploads, states resumed from); what this lease's
        folder holds now (net checkpoints) is what the rows name."""
        for location in {state, self.state_location, self.unnamed_state}:
            if location is not None:
                artifacts.delete(location)
        self._clean_up_kept()
        ours = f"lease-{self.lease.token}"
        for name in artifacts.names_under(self.folder):
            if name.startswith("lease-") and name != ours:
                artifacts.delete_tree(artifacts.locate(self.folder, name))

    def _clean_up_kept(self) -> None:
        """Kept states SQL does not name (a stale worker's, one a later run kept in its place, or
        past where a run ended) are removed; those it names stay, to fork from."""

        def named(session: Session) -> set[str]:
            return {kept.location for kept in queries.kept_states(session, self.experiment_id)}

        kept = in_transaction(self.sessions, named, self.settings.database_retry_seconds)
        for lease in artifacts.names_under(self.kept_folder):
            folder = artifacts.locate(self.kept_folder, lease)
            for name in artifacts.names_under(folder):
                if artifacts.locate(folder, name) not in kept:
                    artifacts.delete(artifacts.locate(folder, name))

    def _experiment(self, session: Session) -> Experiment:
        experiment = queries.get_experiment(session, self.experiment_id)
        assert experiment is not None  # the lease holds the row
        return experiment

    def _record_results(
        self,
        session: Session,
        step: int,
        test_accuracies: Mapping[Variant, tuple[float, float]],
        saved: dict[Variant, SavedNet],
    ) -> str | None:
        """Returns the state the row named (see `_forget_state`)."""
        experiment = self._experiment(session)
        # A fork's nets crossed 90% where its parent's did, if that was before the fork's step:
        # with no changes, its results are its parent's.
        curves = queries.curve_since_start(session, experiment)
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
            queries.add_checkpoint(session, run, step, path, sha256, size)
        experiment.status, experiment.finished_at = "succeeded", utc_now()
        experiment.eta_seconds = 0.0
        return self._forget_state(experiment)

    def _save_net(self, trainer: Trainer, variant: Variant) -> SavedNet:
        path = artifacts.locate(self.lease_folder, f"{variant}.safetensors")
        digest, size = save_net(
            path,
            trainer.net_state(self.name, variant),
            variant=variant,
            arch=self.spec.architecture(),
            spec=self.spec.model_dump(),
            step=trainer.step,
            dataset=self.spec.dataset,
            experiment_id=self.experiment_id,
        )
        return path, digest, size


class TrainingJob:
    def __init__(
        self,
        experiment_ids: list[int],
        settings: Settings,
        worker: str,
        shutting_down: Callable[[], bool] = lambda: False,
        hand_back: Enqueue | None = None,
    ) -> None:
        """`worker` names the worker in the experiments' rows; `shutting_down` says it is
        stopping; `hand_back(ids, queue)` queues a job for experiments it handed back."""
        self.experiment_ids = experiment_ids
        self.settings = settings
        self.worker = worker
        self.shutting_down = shutting_down
        self.hand_back = hand_back
        self.cells: list[CellRecorder] = []  # those still in the job

    def run(self) -> None:
        sessions = make_sessionmaker(self.settings.database_url)
        claimed = [
            CellRecorder.claim(experiment_id, self.settings, self.worker, sessions)
            for experiment_id in self.experiment_ids
        ]
        self.cells = [cell for cell in claimed if cell is not None]
        if not self.cells:
            return
        with ExitStack() as keepers:
            for cell in self.cells:
                keepers.enter_context(cell.keeper)
            try:
                self._train()
            except EXPECTED_ERRORS as error:
                self._fail(str(error))
            except DBAPIError as error:
                if not is_transient(error):
                    raise
                # Not the experiments' fault: their heartbeats stop, the reaper queues them
                # again and a worker resumes each from its last sample point.
                log.error("%s: database unreachable for too long", self._called())
            except Exception as error:
                log.exception("%s failed", self._called())
                self._fail(f"internal error: {type(error).__name__}: {error}")

    def _called(self) -> str:
        """The job as log lines name it: its experiment, or its group of experiments (all it
        was given, once every cell has left)."""
        ids = [cell.experiment_id for cell in self.cells] or self.experiment_ids
        return f"experiment {ids[0]}" if len(ids) == 1 else f"group {ids}"

    def _train(self) -> None:
        spec = self.cells[0].spec
        if len({stack_key(cell.spec) for cell in self.cells}) > 1:
            raise ValueError(
                "these experiments cannot train as one group: their specs differ in more than "
                "the learning rate and the initial weights"
            )
        device = resolve_device("cuda" if spec.device == "gpu" else "cpu")
        splits = load_splits(
            spec.dataset, self.settings.data_dir, self.settings.download, spec.validation_size
        )
        # What trains each cell, in its row (its bundle's provenance).
        self._each(
            lambda cell: cell.note_provenance(provenance_of(cell.spec, device, self.settings))
        )
        cells = [Cell(cell.name, cell.spec.training()) for cell in self.cells]
        trainer = build_trainer(
            spec.architecture(),
            cells,
            splits,
            device,
            self.settings.bn_impl,
            spec.variants,
            spec.probes.probes(),
        )
        if len(cells) > 1:
            log.info("%s: %d cells train as one batched model", self._called(), len(cells))
        self._resume(trainer)
        progress = _Progress(trainer.step)

        def on_sample(sample: Sample) -> None:
            rates = progress.update(sample.step, spec.training_batches)
            self._each(lambda cell: self._record(cell, trainer, sample, rates))

        if trainer.run(on_sample, lambda: self._should_stop(trainer)) == "finished":
            self._finish(trainer, splits)
        elif self.cells:  # stopped with cells left: the worker is shutting down
            self._hand_back()

    def _resume(self, trainer: Trainer) -> None:
        """From the cells' state files, when every cell has one and all are at one sample point;
        else from the start (a cell of the group resumed alone meanwhile, or the group died
        while saving)."""
        states = {cell.name: cell.saved_state() for cell in self.cells}
        saved = {name: state for name, state in states.items() if state is not None}
        if not trainer.restore(saved):
            return
        self._each(lambda cell: cell.resume_at(trainer.step))
        log.info("%s resumes at step %d", self._called(), trainer.step)

    @staticmethod
    def _record(cell: CellRecorder, trainer: Trainer, sample: Sample, rates: Rates) -> None:
        cell.record(sample.step, sample.cells[cell.name], rates, trainer.state(cell.name))

    def _should_stop(self, trainer: Trainer) -> bool:
        """At a sample point: cells that were cancelled, or whose lease was taken, leave the
        trainer; the job stops when none is left, or when the worker shuts down."""
        leaving = [cell for cell in self.cells if cell.leaving]
        if leaving:
            self.cells = [cell for cell in self.cells if cell not in leaving]
            if self.cells:  # with none left, the trainer just stops
                trainer.drop(cell.name for cell in leaving)
            self._each(CellRecorder.cancel, leaving)
        return not self.cells or self.shutting_down()

    def _hand_back(self) -> None:
        """Each cell goes back to the queue (its state file stays), and the group is queued
        again, to resume as one."""
        self._each(CellRecorder.hand_back)
        handed_back = [cell.experiment_id for cell in self.cells if not cell.lost]
        if not handed_back or self.hand_back is None:
            return
        try:
            self.hand_back(handed_back, self.cells[0].queue)
        except Exception:  # the broker is down: the reaper queues them once a worker is idle
            log.warning("%s: could not queue it again", self._called())

    def _finish(self, trainer: Trainer, splits: Splits) -> None:
        """Every cell's nets tested at once, then each cell's results written."""
        test_accuracies = trainer.test_accuracies(splits.test)
        self._each(lambda cell: cell.finish(trainer, test_accuracies[cell.name]))

    def _fail(self, reason: str) -> None:
        self._each(lambda cell: cell.fail(reason))

    def _each(
        self, work: Callable[[CellRecorder], None], cells: Iterable[CellRecorder] | None = None
    ) -> None:
        """`work` for each cell (default: those still in the job) but the lost ones: a cell
        whose lease was taken gets nothing more from this worker; the others carry on."""
        for cell in list(self.cells if cells is None else cells):
            if cell.lost:
                continue
            try:
                work(cell)
            except LeaseLost as lost:
                log.warning("%s; this worker writes nothing more for it", lost)


class _Progress:
    """Steps per second between sample points, and the time left at that pace."""

    def __init__(self, step: int) -> None:
        self.step, self.time = step, time.monotonic()

    def update(self, step: int, total: int) -> Rates:
        now = time.monotonic()
        if step == self.step or now == self.time:
            return None, None
        rate = (step - self.step) / (now - self.time)
        self.step, self.time = step, now
        return rate, (total - step) / rate
