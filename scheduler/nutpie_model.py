"""The planner's PyMC model as nutpie samples it: pytensor's numba functions, called through
nutpie's Python-function interface, so that a start after the first loads them from disk.

nutpie's own `compile_pymc_model` wraps pytensor's functions in numba C callbacks that numba
cannot cache (they close over dynamic globals), so every tracker start compiled them again:
20.1-20.2 s a start on a 2-core AMD host with PyTensor's cache warm (33 s on the slowest).
pytensor caches its own numba functions on disk (`numba__cache`, under `base_compiledir`);
called from Python, the model is ready in 4.1-4.2 s on every start after the first, with the
same draws, for 1.45x the CPU a posterior (`python -m bench.sampler_backends`, two runs).

This reads two helpers nutpie keeps private (`_make_functions`, `_prepare_dims_and_coords`,
nutpie pinned in requirements.txt); if a nutpie release moves them, `compile_model` falls
back to nutpie's C callbacks, with a warning: slower to start, the same posterior.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("pyfunc", "cfunc")


@dataclass(frozen=True)
class PyfuncModel:
    """What `sample` needs: the two numba functions, the order of their data arguments, the
    data they were built with (replaced per call), and the draws' names, shapes and dims."""

    n_dim: int
    logp_fn: Any
    expand_fn: Any
    logp_names: tuple[str, ...]
    expand_names: tuple[str, ...]
    default_data: Mapping[str, np.ndarray]
    initial_point_fn: Any
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dims: dict
    coords: dict

    def bind(self, data: Mapping[str, np.ndarray]) -> Any:
        """A nutpie model over `data` (names missing from it keep their build-time values)."""
        from nutpie.compiled_pyfunc import from_pyfunc

        values = {**self.default_data, **data}
        unknown = set(data) - set(self.default_data)
        if unknown:
            raise ValueError(f"unknown data variables: {sorted(unknown)}")
        logp_args = tuple(values[n] for n in self.logp_names)
        expand_args = tuple(values[n] for n in self.expand_names)
        logp_fn, expand_fn, names, shapes = self.logp_fn, self.expand_fn, self.names, self.shapes

        def make_logp():
            def logp(x):
                value, grad = logp_fn(x, *logp_args)
                return float(value), np.asarray(grad, dtype="float64", order="C")
            return logp

        def make_expand(_seed1, _seed2, _chain):
            def expand(x):
                outputs = expand_fn(x, *expand_args)
                return {n: np.asarray(v, dtype="float64", order="C").reshape(s)
                        for n, v, s in zip(names, outputs, shapes, strict=True)}
            return expand

        return from_pyfunc(ndim=self.n_dim, make_logp_fn=make_logp, make_expand_fn=make_expand,
                           make_initial_point_fn=self.initial_point_fn,
                           expanded_dtypes=[np.dtype("float64")] * len(names), expanded_shapes=list(shapes),
                           expanded_names=list(names), dims=dict(self.dims), coords=dict(self.coords))  # nutpie.sample adds to them


def compile_model(model: Any, var_names: Iterable[str], backend: str = "pyfunc") -> Any:
    """A PyfuncModel, or nutpie's compiled model for backend "cfunc" (and the fallback)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pyfunc":
        try:
            return _compile_pyfunc(model, list(var_names))
        except (ImportError, AttributeError, TypeError) as exc:
            log.warning("nutpie's Python-function path is unavailable (%s); compiling its C callbacks, "
                        "which no cache keeps across starts", exc)
    import nutpie

    return nutpie.compile_pymc_model(model, var_names=list(var_names))


def sample(compiled: Any, data: Mapping[str, np.ndarray], **kwargs: Any) -> Any:
    """nutpie.sample on `compiled` with `data`. Python-function chains hold the GIL in turns,
    so they run one after the other (two cores only took turns on the GIL)."""
    import nutpie

    if isinstance(compiled, PyfuncModel):
        return nutpie.sample(compiled.bind(data), **{**kwargs, "cores": 1})
    return nutpie.sample(compiled.with_data(**data), **kwargs)


def _compile_pyfunc(model: Any, var_names: list[str]) -> PyfuncModel:
    from nutpie.compile_pymc import _make_functions, _prepare_dims_and_coords
    from pymc.initial_point import make_initial_point_fn

    # As nutpie.compile_pymc_model does: start each chain at the support point, jittered
    # (at the prior's centre an empty data set has a zero gradient, which nutpie rejects).
    initial_point = make_initial_point_fn(model=model, default_strategy="support_point",
                                          jitter_rvs=set(model.free_RVs), return_transformed=True)
    n_dim, _, logp_pt, expand_pt, initial_point_fn, shape_info = _make_functions(
        model, mode="NUMBA", compute_grad=True, join_expanded=False,
        pymc_initial_point_fn=initial_point, var_names=var_names)
    shared = {v.name: np.asarray(v.get_value()) for v in (*logp_pt.get_shared(), *expand_pt.get_shared())}
    names, _slices, shapes = shape_info
    dims, coords = _prepare_dims_and_coords(model, shape_info)
    compiled = PyfuncModel(
        n_dim=n_dim, logp_fn=logp_pt.vm.jit_fn, expand_fn=expand_pt.vm.jit_fn,
        logp_names=tuple(v.name for v in logp_pt.get_shared()),
        expand_names=tuple(v.name for v in expand_pt.get_shared()),
        default_data=shared, initial_point_fn=initial_point_fn,
        names=tuple(names), shapes=tuple(tuple(s) for s in shapes), dims=dims, coords=coords)
    # numba compiles (or loads from pytensor's cache) at the first call: do it now, not in
    # the first posterior.
    x0 = np.asarray(initial_point_fn(0), dtype="float64")
    compiled.logp_fn(x0, *(shared[n] for n in compiled.logp_names))
    compiled.expand_fn(x0, *(shared[n] for n in compiled.expand_names))
    return compiled
