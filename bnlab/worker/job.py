"""One experiment, run by a worker: load the spec, train the pair, write what a user reads.

SQL gets a write per sample point (curve points, progress) and at the end (results,
checkpoints). The trainer's whole state is saved at every sample point too, so a job delivered
again after its worker died resumes from there instead of starting over.
"""

import logging
import time
from pathlib import Path

from sqlalchemy.orm import Session

from bnlab.models.checkpoint import load_state, save_net, save_state
from bnlab.models.data import DataUnavailable, Splits, load_splits
from bnlab.models.device import DeviceUnavailable, resolve_device
from bnlab.models.inference import accuracy
from bnlab.models.trainer import Sample, Trainer, paired_trainer
from bnlab.models.trainer import first_step_reaching as first_step
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.store import queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.tables import Experiment, utc_now

log = logging.getLogger(__name__)
# Errors whose message is already a reason a person can act on.
EXPECTED_ERRORS = (DataUnavailable, DeviceUnavailable, ValueError)


class ExperimentJob:
    def __init__(self, experiment_id: int, settings: Settings, hostname: str) -> None:
        self.experiment_id = experiment_id
        self.settings = settings
        self.hostname = hostname
        self.sessions = make_sessionmaker(settings.database_url)
        self.folder = settings.checkpoint_dir / f"experiment-{experiment_id}"
        self.state_path = self.folder / "training-state.safetensors"

    def run(self) -> None:
        with self.sessions() as session:
            experiment = queries.get_experiment(session, self.experiment_id)
            if experiment is None or experiment.status in queries.TERMINAL:
                return  # deleted, or a duplicate delivery of a finished job
            spec = ExperimentSpec.model_validate(experiment.spec)
            self._start(session, experiment)
            try:
                self._train(session, experiment, spec)
            except EXPECTED_ERRORS as error:
                self._fail(session, experiment, str(error))
            except Exception as error:
                log.exception("experiment %s failed", self.experiment_id)
                self._fail(session, experiment, f"internal error: {type(error).__name__}: {error}")

    def _start(self, session: Session, experiment: Experiment) -> None:
        experiment.status = "running"
        experiment.started_at = experiment.started_at or utc_now()
        experiment.worker = self.hostname
        experiment.lease_token += 1
        experiment.heartbeat_at = utc_now()
        session.commit()

    def _train(self, session: Session, experiment: Experiment, spec: ExperimentSpec) -> None:
        device = resolve_device("cuda" if spec.device == "gpu" else "cpu")
        splits = load_splits(
            spec.dataset, self.settings.data_dir, self.settings.download, spec.validation_size
        )
        trainer = paired_trainer(
            spec.architecture(), spec.training(), splits, device, self.settings.bn_impl
        )
        if self.state_path.exists():
            trainer.restore(*load_state(self.state_path))
            queries.drop_curve_after(session, experiment, trainer.step)
            session.commit()
            log.info("experiment %s resumes at step %d", self.experiment_id, trainer.step)
        progress = _Progress(trainer.step)

        def on_sample(sample: Sample) -> None:
            self._record_sample(session, experiment, sample, progress)
            save_state(self.state_path, *trainer.state())

        def should_cancel() -> bool:
            session.refresh(experiment, ["cancel_requested"])
            return experiment.cancel_requested

        if trainer.run(on_sample, should_cancel) == "cancelled":
            experiment.status, experiment.finished_at = "cancelled", utc_now()
            session.commit()
            return
        self._finish(session, experiment, spec, trainer, splits)

    def _record_sample(
        self, session: Session, experiment: Experiment, sample: Sample, progress: "_Progress"
    ) -> None:
        points = {label: (net.val_accuracy, net.train_loss) for label, net in sample.nets.items()}
        queries.add_curve_points(session, experiment, sample.step, points)
        for label, step in sample.diverged_at.items():
            queries.run_of(experiment, label).diverged_at_step = step
        experiment.progress_step = sample.step
        experiment.steps_per_second, experiment.eta_seconds = progress.update(
            sample.step, experiment.progress_total
        )
        experiment.heartbeat_at = utc_now()
        session.commit()

    def _finish(
        self,
        session: Session,
        experiment: Experiment,
        spec: ExperimentSpec,
        trainer: Trainer,
        splits: Splits,
    ) -> None:
        curves = queries.curve(session, experiment.id)
        test = splits.test.to(trainer.lanes[0].stack.output_bias.device)
        for lane in trainer.lanes:
            for index, variant in enumerate(lane.active):
                run = queries.run_of(experiment, variant)
                run.test_accuracy = accuracy(lane.stack, test, "population")[index]
                run.test_accuracy_batch_stats = accuracy(
                    lane.stack, test, "batch", batch_size=spec.batch_size
                )[index]
        for variant, points in curves.items():
            run = queries.run_of(experiment, variant)
            steps = [p.step for p in points]
            accuracies = [p.val_accuracy for p in points]
            if run.diverged_at_step is None and points:
                run.final_val_accuracy = accuracies[-1]
            run.steps_to_90 = first_step(steps, accuracies, 0.90)
            run.steps_to_95 = first_step(steps, accuracies, 0.95)
            self._save_checkpoint(session, experiment, spec, trainer, variant)
        experiment.status, experiment.finished_at = "succeeded", utc_now()
        experiment.eta_seconds = 0.0
        session.commit()
        self.state_path.unlink(missing_ok=True)

    def _save_checkpoint(
        self,
        session: Session,
        experiment: Experiment,
        spec: ExperimentSpec,
        trainer: Trainer,
        variant: str,
    ) -> None:
        path = self.folder / f"{variant}.safetensors"
        sha256, size = save_net(
            path,
            trainer.net_state(variant),
            variant=variant,
            arch=spec.architecture(),
            spec=spec.model_dump(),
            step=trainer.step,
            dataset=spec.dataset,
            experiment_id=experiment.id,
        )
        run = queries.run_of(experiment, variant)
        queries.add_checkpoint(session, run, trainer.step, str(Path(path).absolute()), sha256, size)

    def _fail(self, session: Session, experiment: Experiment, reason: str) -> None:
        session.rollback()
        experiment.status, experiment.error = "failed", reason
        experiment.finished_at = utc_now()
        session.commit()


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
