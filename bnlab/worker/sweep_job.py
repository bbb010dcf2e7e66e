"""Cells of a sweep trained as one batched model by one worker, each written as an experiment.

The API sends cells that share an architecture, activation, batch order and schedule as one job
(bnlab/sweeps.py `groups`). The job claims each cell as `ExperimentJob` would (a lease per cell,
kept alive from its own thread), trains all their nets in a stacked trainer (a `plain` lane and a
`bn` lane, bnlab/models/stacked.py), and writes every cell's curve points, progress, results and
checkpoints through that cell's own `ExperimentJob` methods: GET /experiments/{id} cannot tell a
cell trained in a group from one trained alone.

Each cell's training state is saved in its own state file, in the lone experiment's format, so a
cell queued again on its own (the reaper does that for a dead worker's experiments) resumes from
its last sample point, and so does the group when its job is delivered again.

At a sample point, a cell that was cancelled (or whose lease was taken) leaves the stacks and the
others carry on; the group stops when no cell is left. A worker shutting down hands every cell
back and queues the group again.
"""

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace

from sqlalchemy.exc import DBAPIError
from torch import Tensor

from bnlab.models.checkpoint import load_state, save_state
from bnlab.models.data import Splits, load_splits
from bnlab.models.device import resolve_device
from bnlab.models.stacked import Cell, drop_cells, net_label, split_label, stacked_trainer
from bnlab.models.trainer import Sample, Trainer
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store.leases import LeaseLost
from bnlab.store.retry import is_transient
from bnlab.store.tables import VARIANTS
from bnlab.sweeps import stack_key
from bnlab.worker.job import EXPECTED_ERRORS, ExperimentJob, _Progress
from bnlab.worker.lease import LeaseKeeper

log = logging.getLogger(__name__)


class CellView:
    """One cell's nets in the group's trainer, seen as a lone experiment's trainer: what
    `ExperimentJob` reads to save checkpoints and state (`step`, `net_state(variant)`)."""

    def __init__(self, trainer: Trainer, cell: str) -> None:
        self.trainer = trainer
        self.cell = cell

    @property
    def step(self) -> int:
        return self.trainer.step

    def net_state(self, variant: str) -> dict[str, Tensor]:
        return self.trainer.net_state(net_label(self.cell, variant))  # type: ignore[arg-type]

    def state(self) -> tuple[dict[str, Tensor], dict[str, object]]:
        """As `Trainer.state()` of the cell's lone paired trainer: `paired_trainer` restores it."""
        tensors = {
            f"{variant}/{name}": tensor
            for variant in VARIANTS
            for name, tensor in self.net_state(variant).items()
        }
        diverged_at = {
            split_label(label)[1]: step
            for label, step in self.trainer.diverged_at.items()
            if split_label(label)[0] == self.cell
        }
        return tensors, {"step": self.trainer.step, "diverged_at": diverged_at}


class CellJob(ExperimentJob):
    """One cell of the group: claimed, leased and written exactly as a lone experiment; its
    nets are trained by the group. Test accuracies are measured for the whole group at once."""

    test_results: dict[str, tuple[float, float]]

    @property
    def name(self) -> str:
        return str(self.experiment_id)

    def _test_accuracies(
        self, spec: ExperimentSpec, trainer: object, splits: Splits
    ) -> dict[str, tuple[float, float]]:
        return self.test_results


class SweepGroupJob:
    def __init__(
        self,
        experiment_ids: list[int],
        settings: Settings,
        worker: str,
        shutting_down: Callable[[], bool] = lambda: False,
        hand_back: Callable[[list[int], str], None] | None = None,
    ) -> None:
        """As `ExperimentJob`; `hand_back(ids, queue)` queues the group again."""
        self.settings = settings
        self.shutting_down = shutting_down
        self.hand_back = hand_back
        self.cells = [CellJob(i, settings, worker, shutting_down) for i in experiment_ids]

    def run(self) -> None:
        claimed = [(cell, cell._claim()) for cell in self.cells]
        taken = [(cell, claim) for cell, claim in claimed if claim is not None]
        if not taken:
            return
        for cell, (lease, _, _) in taken:
            cell.lease = lease
        self.active = [cell for cell, _ in taken]
        specs = {cell.name: claim[1] for cell, claim in taken}
        self.queue = taken[0][1][2]
        interval = self.settings.worker_heartbeat_seconds
        with ExitStack() as keepers:
            for cell in self.active:
                cell.keeper = keepers.enter_context(
                    LeaseKeeper(cell.sessions, cell.lease, interval)
                )
            try:
                self._train(specs)
            except EXPECTED_ERRORS as error:
                self._fail(str(error))
            except DBAPIError as error:
                if not is_transient(error):
                    raise
                # As for a lone experiment: the reaper queues the cells again, and they resume.
                log.error("sweep group %s: database unreachable for too long", self._ids())
            except Exception as error:
                log.exception("sweep group %s failed", self._ids())
                self._fail(f"internal error: {type(error).__name__}: {error}")

    def _ids(self) -> list[int]:
        return [cell.experiment_id for cell in self.active]

    def _train(self, specs: dict[str, ExperimentSpec]) -> None:
        first = next(iter(specs.values()))
        if len({stack_key(spec) for spec in specs.values()}) > 1:
            raise ValueError("these cells cannot train as one batched model: their specs differ")
        device = resolve_device("cuda" if first.device == "gpu" else "cpu")
        splits = load_splits(
            first.dataset, self.settings.data_dir, self.settings.download, first.validation_size
        )
        cells = [Cell(name, spec.training()) for name, spec in specs.items()]
        trainer = stacked_trainer(
            first.architecture(), cells, splits, device, self.settings.bn_impl
        )
        log.info("sweep group %s: %d cells train as one batched model", self._ids(), len(cells))
        self._resume(trainer)
        progress = _Progress(trainer.step)

        def on_sample(sample: Sample) -> None:
            rates = progress.update(sample.step, first.training_batches)
            for cell in list(self.active):
                self._record(cell, trainer, _cell_sample(sample, cell.name), rates)

        if trainer.run(on_sample, lambda: self._should_stop(trainer)) == "cancelled":
            self._stop()
            return
        self._finish(specs, trainer, splits)

    def _resume(self, trainer: Trainer) -> None:
        """Continue from the cells' state files when all of them are at one sample point; else
        start over (a cell resumed alone, or a group that died while saving)."""
        paths = {cell.name: cell.state_path for cell in self.active}
        if not all(path.exists() for path in paths.values()):
            return
        if not restore_cells(trainer, {name: load_state(path) for name, path in paths.items()}):
            return
        for cell in self.active:
            cell._write(lambda session, c=cell: c._forget_after(session, trainer.step))
        log.info("sweep group %s resumes at step %d", self._ids(), trainer.step)

    def _record(
        self,
        cell: CellJob,
        trainer: Trainer,
        sample: Sample,
        rates: tuple[float | None, float | None],
    ) -> None:
        try:
            cell._write(lambda session: cell._record_sample(session, sample, rates))
        except LeaseLost as lost:
            log.warning("%s; the group trains on without it", lost)
            cell.keeper.lost.set()  # it leaves the group at this sample point
            return
        save_state(cell.state_path, *CellView(trainer, cell.name).state())

    def _should_stop(self, trainer: Trainer) -> bool:
        """At a sample point: cancelled cells (and cells whose lease was taken) leave the
        stacks; the group stops when none is left, or when the worker shuts down."""
        if self.shutting_down():
            return True
        leaving = [cell for cell in self.active if cell._should_stop()]
        for cell in leaving:
            self.active.remove(cell)
            try:
                cell._stop(self.queue)  # writes `cancelled`, or raises LeaseLost
            except LeaseLost as lost:
                log.warning("%s; the group trains on without it", lost)
        if leaving:
            drop_cells(trainer, [cell.name for cell in leaving])
        return not self.active

    def _stop(self) -> None:
        """Stopped early with cells left: the worker is shutting down. Each cell goes back to
        the queue (its state file stays) and the group is queued again, to resume as one."""
        handed_back = []
        for cell in self.active:
            try:
                cell._stop(self.queue)
                handed_back.append(cell.experiment_id)
            except LeaseLost as lost:
                log.warning("%s; not handed back", lost)
        if handed_back and self.hand_back is not None:
            try:
                self.hand_back(handed_back, self.queue)
            except Exception:  # the broker is down: the reaper queues the cells one by one
                log.warning("sweep group %s: could not queue it again", handed_back)

    def _finish(self, specs: dict[str, ExperimentSpec], trainer: Trainer, splits: Splits) -> None:
        """Test every net at once, then write each cell's results as its lone job would."""
        some_cell = self.active[0]
        # The lone job's measurement, run once over the group's stacks (CellJob's own override
        # hands each cell its share): results keyed by net label, "<cell>:<variant>".
        results = ExperimentJob._test_accuracies(some_cell, specs[some_cell.name], trainer, splits)
        for cell in self.active:
            cell.test_results = {
                split_label(label)[1]: accuracies
                for label, accuracies in results.items()
                if split_label(label)[0] == cell.name
            }
            try:
                cell._finish(specs[cell.name], CellView(trainer, cell.name), splits)  # type: ignore[arg-type]
            except LeaseLost as lost:
                log.warning("%s; its results are not recorded", lost)

    def _fail(self, reason: str) -> None:
        for cell in self.active:
            cell._fail(reason)


def restore_cells(trainer: Trainer, states: dict[str, tuple[dict[str, Tensor], dict]]) -> bool:
    """Restore a stacked trainer from its cells' states (`CellView.state()`, by cell name);
    False, leaving it untouched, unless they are all at one step."""
    steps = {int(meta["step"]) for _, meta in states.values()}
    if len(steps) != 1:
        return False
    tensors: dict[str, Tensor] = {}
    diverged_at: dict[str, int] = {}
    for cell, (cell_tensors, meta) in states.items():
        for key, tensor in cell_tensors.items():
            variant, name = key.split("/", 1)
            tensors[f"{net_label(cell, variant)}/{name}"] = tensor  # type: ignore[arg-type]
        for variant, step in meta["diverged_at"].items():
            diverged_at[net_label(cell, variant)] = int(step)
    trainer.restore(tensors, {"step": steps.pop(), "diverged_at": diverged_at})
    return True


def _cell_sample(sample: Sample, cell: str) -> Sample:
    """The group's sample point as the cell's lone trainer would report it."""

    def mine(labels: dict) -> dict:
        return {
            split_label(label)[1]: value
            for label, value in labels.items()
            if split_label(label)[0] == cell
        }

    return replace(sample, nets=mine(sample.nets), diverged_at=mine(sample.diverged_at))
