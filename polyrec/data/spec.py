"""The data contracts between data, layers, models, metrics and training: what a model needs to know about
the data (sizes, fields, scenarios, tasks; saved with every run) and what it outputs (heads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskInfo:
    name: str
    type: str  # "binary" | "regression"
    space: str | None = None  # train and score only where this task's label is 1


@dataclass
class ModelSpec:
    vocab_sizes: list[int]
    categorical_fields: list[str]
    numeric_fields: list[str]
    sequence_vocab: dict[str, int]
    scenario_names: list[str]  # index = scenario id; id 0 is the unknown-scenario slot
    tasks: list[TaskInfo]
    extra: dict[str, Any] = field(default_factory=dict)
    sequence_shares: dict[str, str] = field(default_factory=dict)  # sequence -> categorical field it shares
    sequence_lengths: dict[str, int] = field(default_factory=dict)  # sequence -> max_len
    sequence_encoders: dict[str, dict[str, Any]] = field(default_factory=dict)  # sequence -> encoder config
    sequence_sides: dict[str, list[str]] = field(default_factory=dict)  # history items -> its side sequences
    # vector feature -> dim; their values are the numeric matrix's last columns, in this order, after the
    # scalar `numeric_fields` (polyrec.data.vectors)
    vector_dims: dict[str, int] = field(default_factory=dict)

    @property
    def sequence_fields(self) -> list[str]:
        """Sequences that are model fields: every sequence but the histories' side fields (which are added
        into their history's event embeddings)."""
        sides = {s for v in self.sequence_sides.values() for s in v}
        return [s for s in self.sequence_vocab if s not in sides]

    @property
    def n_scenarios(self) -> int:
        """Number of scenario slots (the unknown slot included), i.e. rows of per-scenario parameters."""
        return len(self.scenario_names)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        d["tasks"] = [TaskInfo(**t) for t in d["tasks"]]
        return cls(**d)


@dataclass(frozen=True)
class Head:
    """One model output. `task` names the label column; `space` restricts rows to label(space) == 1."""

    name: str
    task: str
    kind: str  # "binary" (output is a logit) | "regression" (output is the value)
    space: str | None = None
    train: bool = True
