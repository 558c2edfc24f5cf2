"""The DAG job spec: stages, input references, topological order, and seed-003 conversion.

Validation of service names and fields against the service registry happens here, so the
tracker, the planner and the workers all agree on what a valid DAG is.
"""
from __future__ import annotations

import re
from graphlib import CycleError, TopologicalSorter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GENERATOR_STAGE = "generator"
GENERATOR_NAMES = ("SingleFrameGenerator", "ClipGenerator")
GENERATOR_OUTPUTS = {"SingleFrameGenerator": ("image",), "ClipGenerator": ("image", "clip")}
GENERATOR_TYPES = {"image": "jpeg", "clip": "clip"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="unique stage name, referenced as '<name>.<field>'")
    service: str = Field(..., description="service name, see GET /api/v1/services")
    params: dict[str, Any] = Field(default_factory=dict, description="service parameters")
    inputs: dict[str, str] = Field(default_factory=dict, description="input field -> '<stage>.<field>'")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v) or v == GENERATOR_STAGE or v in GENERATOR_NAMES:
            raise ValueError("stage name must be an identifier and not a generator name")
        return v


class DagSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generator: str = Field("SingleFrameGenerator", description="SingleFrameGenerator | ClipGenerator")
    stages: list[StageSpec] = Field(..., min_length=1, max_length=32)

    @field_validator("generator")
    @classmethod
    def _generator_ok(cls, v: str) -> str:
        if v not in GENERATOR_NAMES:
            raise ValueError(f"unknown generator {v!r}; one of {', '.join(GENERATOR_NAMES)}")
        return v

    @model_validator(mode="after")
    def _graph_ok(self) -> "DagSpec":
        from services.registry import get_service  # registry imports DNN code lazily

        names = [s.name for s in self.stages]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate stage names: {sorted(dupes)}")
        by_name = {s.name: s for s in self.stages}
        for stage in self.stages:
            service = get_service(stage.service)  # raises UnknownService (a ValueError)
            service.validate_params(stage.params)
            missing = set(service.required_inputs) - set(stage.inputs)
            if missing:
                raise ValueError(f"stage {stage.name!r}: missing inputs {sorted(missing)}")
            for field, ref in stage.inputs.items():
                if field not in service.inputs:
                    raise ValueError(f"stage {stage.name!r}: service {stage.service!r} has no input {field!r}")
                src, _, out = ref.partition(".")
                if not out:
                    raise ValueError(f"stage {stage.name!r}: input {field!r} must be '<stage>.<field>', got {ref!r}")
                if src in (GENERATOR_STAGE, self.generator) or src in GENERATOR_NAMES:
                    if out not in GENERATOR_OUTPUTS[self.generator]:
                        raise ValueError(f"stage {stage.name!r}: generator has no output {out!r}")
                    given = GENERATOR_TYPES[out]
                else:
                    if src not in by_name:
                        raise ValueError(f"stage {stage.name!r}: input {field!r} references unknown stage {src!r}")
                    producer = get_service(by_name[src].service)
                    if out not in producer.outputs:
                        raise ValueError(f"stage {stage.name!r}: stage {src!r} has no output {out!r}")
                    given = producer.types[out]
                # A mismatch would fail in the worker on every frame: refuse it at submit.
                wanted = service.types[field]
                if given != wanted:
                    raise ValueError(f"stage {stage.name!r}: input {field!r} takes {wanted}, but {ref!r} is {given}")
        try:
            self.topological_order()
        except CycleError as exc:
            raise ValueError(f"the stages form a cycle: {' -> '.join(exc.args[1])}") from None
        return self

    def dependencies(self) -> dict[str, set[str]]:
        gens = {GENERATOR_STAGE, self.generator, *GENERATOR_NAMES}
        return {
            s.name: {ref.partition(".")[0] for ref in s.inputs.values()} - gens
            for s in self.stages
        }

    def topological_order(self) -> list[str]:
        """Stable order: ties keep the order the user wrote."""
        ts = TopologicalSorter(self.dependencies())
        ts.prepare()
        position = {s.name: i for i, s in enumerate(self.stages)}
        order: list[str] = []
        while ts.is_active():
            ready = sorted(ts.get_ready(), key=position.__getitem__)
            order.extend(ready)
            ts.done(*ready)
        return order

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_seed(self) -> dict:
        """The seed-003 `dag` shape: {generator, flow, input}."""
        return {
            "generator": self.generator,
            "flow": [self.generator, *self.topological_order()],
            "input": {
                s.name: {f: ref.replace(f"{GENERATOR_STAGE}.", f"{self.generator}.", 1) for f, ref in s.inputs.items()}
                for s in self.stages
            },
        }


def dag_from_seed(seed_dag: dict) -> DagSpec:
    """Seed-003 `dag` ({generator, flow, input}) -> DagSpec; stage name = service name."""
    generator = seed_dag.get("generator", "SingleFrameGenerator")
    flow = [s for s in seed_dag.get("flow", []) if s != generator and s not in GENERATOR_NAMES]
    inputs = seed_dag.get("input") or {}
    stages = [StageSpec(name=name, service=name, inputs=dict(inputs.get(name, {}))) for name in flow]
    return DagSpec(generator=generator, stages=stages)


def dag_from_pipeline(pipeline: list[str], generator: str = "SingleFrameGenerator") -> DagSpec:
    """Seed-003 `pipeline` list: each service takes what the services before it produce."""
    from services.registry import get_service

    produced: dict[str, str] = {f: f"{generator}.{f}" for f in GENERATOR_OUTPUTS[generator]}
    stages = []
    for name in pipeline:
        service = get_service(name)
        wired = {f: produced[f] for f in service.inputs if f in produced}
        stages.append(StageSpec(name=name, service=name, inputs=wired))
        produced.update({f: f"{name}.{f}" for f in service.outputs})
    return DagSpec(generator=generator, stages=stages)
