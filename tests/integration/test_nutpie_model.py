"""The planner's model as nutpie samples it (scheduler/nutpie_model.py): pytensor's numba
functions called through nutpie's Python-function interface compute PyMC's own log density
with the data they are bound to, and a posterior follows the data it is given.
(`python -m bench.sampler_backends` checks the draws equal those of nutpie's C callbacks.)"""
from __future__ import annotations

import numpy as np
import pytest

from scheduler import nutpie_model
from scheduler.bayes import STORED, BayesModel, build_pymc_model, empty_data


def _with_cells(data, rng, n_lat: int = 3, n_acc: int = 2):
    """`data` with random observation cells, so every data argument carries weight."""
    a = dict(data.arrays)
    k_lat, k_acc = a["l_m"].size, a["a_m"].size
    a.update(l_n=rng.integers(1, 9, n_lat).astype(float), l_mean=rng.normal(-2.0, 0.5, n_lat),
             l_ss=rng.uniform(0.0, 0.3, n_lat), l_X=rng.normal(0.0, 1.0, (n_lat, k_lat)),
             a_n=rng.integers(1, 9, n_acc).astype(float), a_mean=rng.normal(-0.1, 0.05, n_acc),
             a_ss=rng.uniform(0.0, 0.01, n_acc), a_X=rng.normal(0.0, 1.0, (n_acc, k_acc)))
    return type(data)(**{**data.__dict__, "arrays": a})


@pytest.fixture(scope="module")
def compiled():
    model = BayesModel(max_services=2, max_nodes=2)
    model.compile()
    return model


def test_the_bound_log_density_is_pymcs_own(compiled):
    rng = np.random.default_rng(0)
    base = empty_data(compiled.layout, np.zeros(compiled.layout.S), np.zeros(compiled.layout.N))
    data = _with_cells(base, rng)
    reference = build_pymc_model(data)  # the same model with these data, compiled by PyMC
    logp_ref = reference.compile_logp(jacobian=True)
    pyfunc: nutpie_model.PyfuncModel = compiled._compiled
    assert isinstance(pyfunc, nutpie_model.PyfuncModel)
    logp = pyfunc.bind(data.arrays)._make_logp_func()
    value_vars = [v.name for v in reference.value_vars]
    sizes = [int(np.prod(s)) for n, s in zip(pyfunc.names, pyfunc.shapes) if n in value_vars]
    for _ in range(3):
        x = rng.normal(0.0, 0.5, pyfunc.n_dim)
        point, at = {}, 0
        for name, size, shape in zip(value_vars, sizes, (reference.initial_point()[n].shape for n in value_vars)):
            point[name] = x[at:at + size].reshape(shape)
            at += size
        assert at == pyfunc.n_dim
        value, grad = logp(x)
        assert value == pytest.approx(float(logp_ref(point)), rel=1e-9, abs=1e-9)
        assert grad.shape == (pyfunc.n_dim,) and np.isfinite(grad).all()


def test_a_posterior_follows_the_data_it_is_given(compiled):
    rng = np.random.default_rng(1)
    base = empty_data(compiled.layout, np.zeros(compiled.layout.S), np.zeros(compiled.layout.N))
    data = _with_cells(base, rng, n_lat=6)
    prior, post = compiled.sample(base, seed=0), compiled.sample(data, seed=0)
    again = compiled.sample(data, seed=0)  # one compiled model serves one data set after another
    assert post.source == "posterior" and np.isfinite(post.draws["sig"]).all()
    assert not np.allclose(prior.draws["sig"], post.draws["sig"])
    assert np.array_equal(post.draws["sig"], again.draws["sig"])  # seeded: the same draws


def test_an_unknown_data_name_is_refused(compiled):
    with pytest.raises(ValueError, match="unknown data"):
        compiled._compiled.bind({"no_such_array": np.zeros(1)})


def test_stored_names_are_drawn(compiled):
    assert set(STORED) <= set(compiled._compiled.names)
