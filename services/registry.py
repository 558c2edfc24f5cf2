"""Registry of DNN services, chosen by name (one module per service family).

A service is a pure function `(frame, inputs, params, ctx) -> outputs` plus a declaration
of its inputs, outputs and parameter model, so a DAG can be validated before it runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError


class UnknownService(ValueError):
    pass


# What a field carries between stages; an input takes only an output of its own type.
FIELD_TYPES = {
    "jpeg": "a JPEG-encoded frame",
    "clip": "several JPEG frames (ClipGenerator)",
    "detections": "boxes [{box, cls, conf[, track_id]}], normalised",
    "counts": "per-class counts {class: n}",
    "count_result": "seed count summary {up, total[, per class]}",
    "face_boxes": "face boxes in pixels",
    "scores": "one 0..1 score per box",
    "number": "a single number",
}


class EmptyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ServiceContext:
    """What a service may use besides its inputs: the device and the per-process model cache."""

    device: str = "cpu"
    models: Any = None  # services.models.ModelCache
    person_weights: str | None = None
    tracks: Any = None  # services.tracking.TrackStore: the last frame and boxes per job (ntracking)


RunFn = Callable[[np.ndarray | None, Mapping[str, Any], BaseModel, ServiceContext], dict[str, Any]]


@dataclass(frozen=True)
class Service:
    name: str
    run: RunFn
    inputs: Mapping[str, bool]  # field -> required
    outputs: tuple[str, ...]
    params_model: type[BaseModel] = EmptyParams
    description: str = ""
    # The planner may choose this stage's model grade (YOLO n/s/m/l/x).
    tunable_grade: bool = False
    # Input fields that carry JPEG bytes the task decodes into `frame` before calling run.
    image_input: str | None = "image"
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # field -> FIELD_TYPES key, for every input and output (a field name means one thing per service)
    types: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        undeclared = [f for f in (*self.inputs, *self.outputs) if self.types.get(f) not in FIELD_TYPES]
        if undeclared:
            raise ValueError(f"service {self.name!r}: no known type for fields {undeclared}")

    @property
    def required_inputs(self) -> tuple[str, ...]:
        return tuple(k for k, req in self.inputs.items() if req)

    def validate_params(self, params: Mapping[str, Any]) -> BaseModel:
        try:
            return self.params_model.model_validate(dict(params))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "params"
            raise ValueError(f"service {self.name!r} param {where}: {first['msg']}") from None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "inputs": {k: {"required": v, "type": self.types[k]} for k, v in self.inputs.items()},
            "outputs": list(self.outputs),
            "output_types": {k: self.types[k] for k in self.outputs},
            "params": self.params_model.model_json_schema(),
            "tunable_grade": self.tunable_grade,
            "aliases": list(self.aliases),
        }


_SERVICES: dict[str, Service] = {}


def register(service: Service) -> Service:
    for name in (service.name, *service.aliases):
        if name in _SERVICES:
            raise ValueError(f"service {name!r} registered twice")
        _SERVICES[name] = service
    return service


def _load_builtin() -> None:
    # Importing the modules registers their services (once: Python caches the import).
    # Lazy, so that importing the registry does not pull in every service module.
    from services import builtin  # noqa: F401


def get_service(name: str) -> Service:
    _load_builtin()
    try:
        return _SERVICES[name]
    except KeyError:
        raise UnknownService(f"unknown service {name!r}; known: {', '.join(sorted(all_services()))}") from None


def all_services() -> dict[str, Service]:
    _load_builtin()
    return {s.name: s for s in _SERVICES.values()}
