"""The spec: one pydantic schema for ``kdtune train`` and ``kdtune sweep run``.

Pure data: this module imports nothing of kdtune. Every model forbids unknown keys
(``extra="forbid"``) and every field carries a ``description``, from which ``docs/spec.md``
and ``kdtune spec schema`` (JSON Schema for editors) are generated. Path rules live in
``kdtune/spec/paths.py``; checks that need the registries in ``kdtune/checks.py``.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SpecError(ValueError):
    """A bad spec or search space: one line naming the field and the fix (CLI exit code 2)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FirstK(_Model):
    first: int = Field(ge=1, description="the first k classes of the dataset")


Classes = Union[Literal["all"], list[int], FirstK]
_CLASSES = "`all`, a list of class ids, or `{first: K}`"


class DataSpec(_Model):
    """The dataset both teacher and student read (each sees its own class subset)."""

    name: str = Field("digits", description="dataset registry name: digits, fashion-mnist, mnist, "
                      "cifar10, cifar100, image-folder, or a plugin's")
    root: str | None = Field(None, description="where on-disk datasets live; null: $KDTUNE_DATA "
                             "or ~/.cache/kdtune/data")
    download: bool = Field(False, description="let torchvision download a missing dataset "
                           "(never without asking)")
    train_limit: int | None = Field(None, ge=1, description="a seeded subset of N training "
                                    "images (budgets, tests); null: all")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of the training "
                                "images held out as the validation split that trials are scored on")
    augment: bool | None = Field(None, description="random crop + flip while training; null: the "
                                 "dataset's default (on for 32×32 RGB)")
    split_seed: int = Field(0, description="seed of the validation split; fixed so every trial "
                            "is scored on the same images")


class TeacherSpec(_Model):
    """The teacher: trained once per spec (cached by a hash of these fields) or given."""

    model: str = Field("cnn4", description="model registry name")
    classes: Classes = Field("all", description=f"the teacher's classes: {_CLASSES}")
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of the model factory, "
                                   "e.g. {width: 2}")
    epochs: int = Field(5, ge=1, description="training epochs when kdtune trains it")
    checkpoint: str | None = Field(None, description="a kdtune checkpoint path or "
                                   "models:/NAME@alias; used as is, never retrained")
    params: dict[str, Any] = Field({}, description="its training hyperparameters (the common "
                                   "names: lr, weight_decay, batch_size, optimizer, schedule)")


class StudentSpec(_Model):
    """The student architecture (methods such as finetune/prune build it from the teacher)."""

    model: str = Field("cnn_small", description="model registry name")
    classes: Classes = Field("all", description=f"the student's classes: {_CLASSES}; a subset of "
                             "the teacher's is G→S, a superset S→G")
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of the model factory, "
                                   "e.g. {width: 0.5}")


class SearchSpec(_Model):
    """How trials are sampled (Optuna, through Ray Tune's OptunaSearch)."""

    space: str | None = Field(None, description="a search-space YAML; null: "
                              "search_spaces/<method>.yaml plus _common.yaml")
    algorithm: Literal["tpe", "random", "cmaes"] = Field("tpe", description="Optuna sampler")
    num_samples: int = Field(16, ge=1, description="trials in the sweep")
    seed: int = Field(0, description="sampler seed; trial i trains with seed + i")
    max_concurrent: int | None = Field(None, ge=1, description="trials at once; null: what the "
                                       "cluster's resources fit")
    warm_start: list[str] = Field([], description="earlier sweeps (names in the tracking store) "
                                  "whose finished trials start the new study as observations")
    student: dict[str, dict[str, Any]] = Field({}, description="a searched student architecture: "
                                               "`model` (a choice) and keyword arguments, each a "
                                               "range like a search-space parameter; a list-valued "
                                               "argument is a named choice with `values:` "
                                               "(docs/multi-objective.md)")


class SchedulerSpec(_Model):
    """Early stopping of weak trials (ASHA on main epochs; pre-stages never count)."""

    type: Literal["asha", "none"] = Field("asha", description="asha, or none (every trial runs "
                                          "all epochs)")
    grace_period: int | None = Field(None, ge=1, description="epochs before ASHA's first rung; "
                                     "null: derived from epochs, two rungs (ceil(epochs / "
                                     "reduction_factor²))")
    reduction_factor: float = Field(3.0, gt=1.0, description="ASHA keeps 1/reduction_factor of "
                                    "the trials at each rung")


class ResourcesSpec(_Model):
    """Per-trial resources Ray schedules by."""

    cpu: float = Field(1.0, gt=0, description="CPUs per trial (also torch's thread count)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; a fraction 1/n (0.5, 0.25) packs "
                       "n trials on a card; 0: CPU-only")
    memory_gb: float | None = Field(None, gt=0, description="host memory one trial may add (GiB), "
                                    "enforced as an address-space cap, CPU trials only; null: no cap")

    @field_validator("gpu")
    @classmethod
    def _gpu_fraction(cls, v: float) -> float:
        # Ray packs trials per card by fraction; 0.3 leaves a useless 0.1 on every card.
        if v > 1 and v != int(v):
            raise ValueError("a gpu count above 1 must be whole (e.g. 2)")
        n = round(1 / v) if 0 < v < 1 else 1
        if 0 < v < 1 and not 1 - 1e-3 <= n * v <= 1 + 1e-9:  # 0.3333 packs 3; 0.3 wastes 0.1
            raise ValueError(f"fraction {v} does not divide one GPU: use 1/n, e.g. 0.5, 0.25, 0.3333")
        return v

    @model_validator(mode="after")
    def _memory_cap_cpu_only(self) -> "ResourcesSpec":
        if self.memory_gb is not None and self.gpu > 0:
            raise ValueError("memory_gb caps the trial's address space, which CUDA's large virtual "
                             "reservations break: leave it null for GPU trials")
        return self


class CorruptionSpec(_Model):
    """Extra test accuracies under input corruption at the end of training (robustness)."""

    kind: Literal["pixels", "gaussian"] = Field("pixels", description="pixels: a fraction of "
                                                "pixels replaced by noise; gaussian: noise of σ")
    levels: list[float] = Field([], description="levels in [0, 1]; each adds a metric "
                                "test_acc/<kind>_<level>")

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[float]) -> list[float]:
        if any(not 0 <= x <= 1 for x in v):
            raise ValueError("corruption levels must lie in [0, 1]")
        return v


class Bound(_Model):
    """A bound on one metric (a cost such as params_count or flops)."""

    min: float | None = Field(None, description="lowest allowed value")
    max: float | None = Field(None, description="highest allowed value")

    def holds(self, v: float) -> bool:
        return (self.min is None or v >= self.min) and (self.max is None or v <= self.max)


class TrackingSpec(_Model):
    """The MLflow tracking store."""

    uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else "
                            "sqlite:///<storage>/mlflow.db with artifacts in <storage>/mlartifacts")


class Spec(_Model):
    """A kdtune spec (see docs/spec.md)."""

    name: str = Field("kdtune", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                      description="MLflow experiment name and results folder name")
    data: DataSpec = Field(DataSpec(), description="the dataset")
    teacher: TeacherSpec = Field(TeacherSpec(), description="the teacher")
    student: StudentSpec = Field(StudentSpec(), description="the student")
    method: str | list[str] = Field("kd", description="a method name, or a list: the method is "
                                    "then a searched choice")
    compose: dict[str, float] | None = Field(None, description="{method: weight, ...}: one loss, "
                                             "the weighted sum of these methods' terms")
    params: dict[str, Any] = Field({}, description="fixed hyperparameters: what `train` uses, and "
                                   "constants in a sweep (prefixed `kd.temperature` when several "
                                   "methods are named)")
    epochs: int = Field(10, ge=1, description="main-stage epochs per trial (ASHA's max_t); never "
                        "searched")
    search: SearchSpec = Field(SearchSpec(), description="the sampler")
    scheduler: SchedulerSpec = Field(SchedulerSpec(), description="early stopping")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="per-trial resources")
    metric: str | list[str] = Field("val_acc", description="what the sweep optimises: val_acc, "
                                    "val_loss, test_acc, a loss term the method reports; a list "
                                    "(e.g. [val_acc, params_count]) is a multi-objective sweep")
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = Field(
        "max", description="maximise or minimise each metric (a list for a list of metrics)")
    constraints: dict[str, Bound] = Field({}, description="bounds on a trial's cost metrics, "
                                          "e.g. {params_count: {max: 20000}}: infeasible samples "
                                          "are rejected before they train and never ranked")
    storage: str = Field("./kdtune-results", description="results folder (a path, or a URI such "
                         "as s3://… shared by a cluster's nodes)")
    tracking: TrackingSpec = Field(TrackingSpec(), description="the MLflow store")
    seed: int = Field(0, description="the student's seed in `train` (trials derive theirs from "
                      "search.seed) and the teacher's")
    device: str = Field("auto", description="auto: the GPU Ray assigned (or cuda:0), else cpu")
    max_failures: int = Field(1, ge=0, description="Tune's retries of a crashed trial from its last "
                              "checkpoint (errors of the spec itself are never retried)")
    max_consecutive_failures: int = Field(5, ge=1, description="end the sweep after this many "
                                          "trials failed in a row, naming the commonest error")
    # Tune forces an experiment snapshot (O(trials so far)) every 2 checkpoints of any trial:
    # with many short trials that made the driver's cost per trial grow with the sweep
    # (docs/scaling.md §1.3). A trial's last epoch is always checkpointed.
    checkpoint_every_s: float = Field(0, ge=0, description="a trial checkpoints an epoch only when "
                                      "this many seconds passed since its last checkpoint (and "
                                      "always its last epoch); 0: every epoch. Set it (e.g. 60) "
                                      "for sweeps of many short trials")
    corruption: CorruptionSpec = Field(CorruptionSpec(), description="robustness metrics")
    # Off by default: on the 2-core CPU a compiled epoch ran slower than eager (0.7-0.85x) after a
    # 5-18 s compile (minutes with a cold inductor cache); see benchmarks/README.md.
    compile: bool = Field(False, description="torch.compile the student's forward (worth trying "
                          "on a GPU)")

    @field_validator("method")
    @classmethod
    def _methods_nonempty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("a method list must be non-empty with no repeats")
        return v

    @model_validator(mode="after")
    def _objectives_shape(self) -> "Spec":
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        modes = self.mode if isinstance(self.mode, list) else [self.mode] * len(metrics)
        if not metrics or len(set(metrics)) != len(metrics):
            raise ValueError("metric: a list of metrics must be non-empty with no repeats")
        if len(modes) != len(metrics):
            raise ValueError(f"mode: give one mode per metric ({len(metrics)}), e.g. [max, min]")
        return self

    @model_validator(mode="after")
    def _compose_shape(self) -> "Spec":
        if self.compose is not None:
            if len(self.compose) < 2:
                raise ValueError("compose needs at least two methods, e.g. {ft: 1.0, kd: 1.0}")
            if any(w < 0 for w in self.compose.values()):
                raise ValueError("compose weights must be >= 0")
        return self

    # ---- derived facts (one place for each rule)
    @property
    def methods(self) -> list[str]:
        """Every method the spec names (the searched choice, or the composed members)."""
        if self.compose:
            return list(self.compose)
        return list(self.method) if isinstance(self.method, list) else [self.method]

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """(metric, mode) of every objective; the first is what ASHA schedules on and what
        "the most accurate trial" means in a multi-objective sweep."""
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        modes = self.mode if isinstance(self.mode, list) else [self.mode] * len(metrics)
        return list(zip(metrics, modes))

    @property
    def objective(self) -> str:
        """The first (or only) metric."""
        return self.objectives[0][0]

    @property
    def direction(self) -> str:
        """The first (or only) mode."""
        return self.objectives[0][1]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def prefixed(self) -> bool:
        """Method parameters carry the method prefix (`kd.temperature`) when several are named."""
        return len(self.methods) > 1
