"""The SQL schema as typed ORM classes. The database gets it only through `bnlab/migrations`."""

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, relationship

from bnlab.vocabulary import QUEUES, STATUSES, VARIANTS, Queue, Status, Variant

# Explicit names keep constraints identical on every backend, so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    return datetime.now(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """DateTime(timezone=True) that always hands back aware UTC datetimes.

    SQLite keeps no time zone: without this, the same column reads naive there and aware on
    PostgreSQL, and `now - heartbeat_at` breaks on one of them. Naive input is refused because
    its zone is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give it a time zone (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


# What a person may write on an experiment or a sweep (the API validates against these).
MAX_NAME = 200
MAX_TAG = 40


class Tag(Base):
    """One tag on an experiment or a sweep: the row's owner and the word. One table per owner
    (experiment_tags, sweep_tags), so each has a real foreign key; a filter by tag is a join on
    an index on every backend."""

    __abstract__ = True

    owner_id: Mapped[int]  # each table names it after its owner
    tag: Mapped[str] = mapped_column(String(MAX_TAG), primary_key=True, index=True)


class ExperimentTag(Tag):
    __tablename__ = "experiment_tags"

    owner_id: Mapped[int] = mapped_column(
        "experiment_id", ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )


class SweepTag(Tag):
    __tablename__ = "sweep_tags"

    owner_id: Mapped[int] = mapped_column(
        "sweep_id", ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True
    )


class Annotatable:
    """A name, markdown notes and tags, given by a person: the same on experiments and sweeps.
    `tag_class` is the owner's tag table."""

    tag_class: ClassVar[type[Tag]]

    name: Mapped[str | None] = mapped_column(String(MAX_NAME))
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")

    @declared_attr
    def tag_rows(cls) -> Mapped[list[Tag]]:
        return relationship(
            cls.tag_class,
            cascade="all, delete-orphan",
            passive_deletes=True,
            lazy="selectin",  # every answer that shows the row shows its tags
            order_by=cls.tag_class.tag,
        )

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]


class Experiment(Annotatable, Base):
    __tablename__ = "experiments"
    tag_class = ExperimentTag
    __table_args__ = (
        CheckConstraint(_one_of("status", STATUSES), name="status"),
        CheckConstraint(_one_of("queue", QUEUES), name="queue"),
        # Experiment ids reach clients and queue messages: SQLite must never reuse one.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Plain strings held by CHECK constraints: the types say which words the code may write.
    status: Mapped[Status] = mapped_column(String(16), index=True)
    queue: Mapped[Queue] = mapped_column(String(8))
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)  # a reason a person can act on
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    progress_step: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int]
    steps_per_second: Mapped[float | None] = mapped_column(Float)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    worker: Mapped[str | None] = mapped_column(String(255))  # hostname of the worker running it
    # Fencing token: bumped each time a worker takes the job, so a stale worker's writes lose.
    lease_token: Mapped[int] = mapped_column(default=0)
    # Times a worker died while running it (the lease taken from a stale heartbeat): capped by
    # BNLAB_MAX_WORKER_LOSSES, so a job that kills its worker is not handed out forever.
    worker_losses: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    heartbeat_at: Mapped[datetime | None]
    # The training state to resume from (location and sha256): set in the same fenced write as
    # its sample point's rows, so only the lease holder's state is ever named (migration 0006).
    # None before a first sample point, after the end, and for jobs older than 0006.
    state_location: Mapped[str | None] = mapped_column(String(1024))
    state_sha256: Mapped[str | None] = mapped_column(String(64))
    # What trained it, as its worker recorded it (bnlab/worker/provenance.py), and, for one
    # taken in from a bundle, where it came from (migration 0010).
    provenance: Mapped[dict[str, Any] | None]
    imported_from: Mapped[dict[str, Any] | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    sweep_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="CASCADE"), index=True
    )
    # A fork's lineage (migration 0007): the experiment it continues, the sample point it
    # starts from, and the spec fields it changed there ({field: {"parent": v, "fork": v}}).
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL"), index=True
    )
    fork_step: Mapped[int | None]
    fork_changes: Mapped[dict[str, Any] | None]

    runs: Mapped[list["Run"]] = relationship(
        back_populates="experiment",
        cascade="all, delete-orphan",
        passive_deletes=True,  # the database's ON DELETE CASCADE does it in one statement
        order_by="Run.variant",
    )

    @property
    def variants(self) -> list[Variant]:
        """The variants it trains (a run each from the start), in the vocabulary's order."""
        runs = {run.variant for run in self.runs}
        return [variant for variant in VARIANTS if variant in runs]


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("experiment_id", "variant"),
        CheckConstraint(_one_of("variant", VARIANTS), name="variant"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    variant: Mapped[Variant] = mapped_column(String(16))
    final_val_accuracy: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    test_accuracy_batch_stats: Mapped[float | None] = mapped_column(Float)
    steps_to_90: Mapped[int | None]
    steps_to_95: Mapped[int | None]
    diverged_at_step: Mapped[int | None]

    experiment: Mapped[Experiment] = relationship(back_populates="runs")
    points: Mapped[list["CurvePoint"]] = relationship(
        back_populates="run",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="CurvePoint.step",
    )
    checkpoints: Mapped[list["Checkpoint"]] = relationship(
        back_populates="run",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Checkpoint.version",
    )


class CurvePoint(Base):
    __tablename__ = "curve_points"
    __table_args__ = (
        UniqueConstraint("run_id", "step"),
        CheckConstraint("step >= 0", name="step_not_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int]
    val_accuracy: Mapped[float] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float)  # None at step 0 and when not finite

    run: Mapped[Run] = relationship(back_populates="points")


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "version"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(default=1)
    step: Mapped[int]
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    run: Mapped[Run] = relationship(back_populates="checkpoints")


class KeptState(Base):
    """A training state kept at a sample point (every `keep_states_every`-th, and the last), to
    fork the experiment from there; named in the same fenced write as its sample point, like
    `Experiment.state_location` (migration 0007)."""

    __tablename__ = "kept_states"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(primary_key=True)
    location: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int]


class Worker(Base):
    __tablename__ = "workers"

    hostname: Mapped[str] = mapped_column(String(255), primary_key=True)
    queue: Mapped[Queue] = mapped_column(String(8))
    started_at: Mapped[datetime]
    last_seen: Mapped[datetime]


class Sweep(Annotatable, Base):
    """A grid of experiments (its cells), asked for in one request."""

    __tablename__ = "sweeps"
    tag_class = SweepTag
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    spec: Mapped[dict[str, Any]]  # the grid (or preset) as posted
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)

    experiments: Mapped[list[Experiment]] = relationship(
        passive_deletes=True, order_by="Experiment.id"
    )


class LayerStat(Base):
    """Inside a net at a sample point, per hidden layer: percentiles of the input to the
    nonlinearity over a fixed probe batch, the fraction of dead (or saturated) units, and the
    gradient norm of the layer's weight."""

    __tablename__ = "layer_stats"
    __table_args__ = (UniqueConstraint("run_id", "step", "layer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int]
    layer: Mapped[int]
    p15: Mapped[float] = mapped_column(Float)
    p50: Mapped[float] = mapped_column(Float)
    p85: Mapped[float] = mapped_column(Float)
    dead_fraction: Mapped[float] = mapped_column(Float)
    grad_norm: Mapped[float | None] = mapped_column(Float)  # None at step 0


class ProbeRow(Base):
    """A measurement of why BN helps (bnlab/models/why.py), per net and sample point where the
    experiment's probes ran (migration 0009). A value that was not finite is stored as unknown:
    JSON cannot carry inf or NaN to a client."""

    __abstract__ = True

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int]


class Landscape(ProbeRow):
    """Along the gradient g of the batch at hand: the effective beta-smoothness, the maximum
    over the step sizes of ||grad L(theta) - grad L(theta - eta g)|| / ||eta g||."""

    __tablename__ = "landscapes"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    beta_smoothness: Mapped[float | None] = mapped_column(Float)


class LandscapePoint(ProbeRow):
    """One step size eta along the gradient: the loss at theta - eta g on the same batch, and
    how far the gradient there is from the gradient at theta."""

    __tablename__ = "landscape_points"
    __table_args__ = (UniqueConstraint("run_id", "step", "step_size"),)

    step_size: Mapped[float] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)
    grad_change: Mapped[float | None] = mapped_column(Float)


class LayerShift(ProbeRow):
    """Internal covariate shift of one weight layer (Santurkar et al. Def. 2.1): its gradient
    before and after every earlier layer took its SGD step, on the same batch."""

    __tablename__ = "layer_shifts"
    __table_args__ = (UniqueConstraint("run_id", "step", "layer"),)

    layer: Mapped[int]
    norm: Mapped[float | None] = mapped_column(Float)
    cosine: Mapped[float | None] = mapped_column(Float)


class Sharpness(ProbeRow):
    """The training loss's top Hessian eigenvalue on a fixed batch, beside gradient descent's
    edge of stability 2 / learning rate (Cohen et al. 2021)."""

    __tablename__ = "sharpness"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    eigenvalue: Mapped[float | None] = mapped_column(Float)
    iterations: Mapped[int]
    edge: Mapped[float] = mapped_column(Float)


# Every probe table: a resumed job forgets their rows past its step, as it does curve points.
PROBE_TABLES: tuple[type[ProbeRow], ...] = (Landscape, LandscapePoint, LayerShift, Sharpness)
