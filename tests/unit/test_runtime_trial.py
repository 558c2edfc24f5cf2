"""The runtime trial: each input size served by the runtimes in turn, then by the faster one."""
from __future__ import annotations

import json

import pytest

from services.runtime_trial import ChoiceFile, RuntimeTrial, size_key


def _serve(trial: RuntimeTrial, size: str, ms: dict[str, float], calls: int) -> list[str]:
    served = []
    for _ in range(calls):
        runtime = trial.pick(size)
        served.append(runtime)
        trial.record(size, runtime, ms[runtime] / 1e3)
    return served


def test_sizes_are_served_in_turn_then_by_the_faster_runtime():
    trial = RuntimeTrial(["openvino", "pytorch"], rounds=3)
    served = _serve(trial, "640@768x576", {"openvino": 300.0, "pytorch": 200.0}, 12)
    # one warm-up and three timed calls each, the export first, then PyTorch for good
    assert served[:8] == ["openvino", "pytorch"] * 4
    assert served[8:] == ["pytorch"] * 4
    assert trial.decided() == {"640@768x576": "pytorch"}


def test_each_size_has_its_own_winner():
    trial = RuntimeTrial(["openvino", "pytorch"], rounds=2)
    _serve(trial, "320@640x480", {"openvino": 40.0, "pytorch": 80.0}, 6)
    _serve(trial, "640@640x480", {"openvino": 300.0, "pytorch": 200.0}, 6)
    assert trial.decided() == {"320@640x480": "openvino", "640@640x480": "pytorch"}


def test_the_warm_up_call_is_not_counted():
    trial = RuntimeTrial(["openvino", "pytorch"], rounds=2)
    size = "480@640x480"
    for runtime, ms in [("openvino", 5000.0), ("pytorch", 100.0)] + [("openvino", 50.0), ("pytorch", 100.0)] * 2:
        assert trial.pick(size) == runtime
        trial.record(size, runtime, ms / 1e3)
    assert trial.decided() == {size: "openvino"}  # its slow first call (a shape compile) ignored


def test_a_near_tie_keeps_the_preferred_runtime():
    trial = RuntimeTrial(["openvino", "pytorch"], rounds=3, margin=0.05)
    _serve(trial, "s", {"openvino": 100.0, "pytorch": 97.0}, 8)  # 3 % faster: noise on a shared host
    assert trial.decided() == {"s": "openvino"}


def test_batches_are_served_by_the_preferred_runtime_until_the_size_is_decided():
    trial = RuntimeTrial(["openvino", "pytorch"], rounds=1)
    assert trial.pick("s", batch=4) == "openvino"
    _serve(trial, "s", {"openvino": 100.0, "pytorch": 50.0}, 4)
    assert trial.pick("s", batch=4) == "pytorch"


def test_decisions_are_kept_per_host_and_export_and_read_back(tmp_path):
    saved = ChoiceFile(tmp_path, "cpu A|2 cores|1 threads|cpu", "best-abc-openvino-2026.4.0")
    trial = RuntimeTrial(["openvino", "pytorch"], rounds=1, decided=saved.load(), on_decide=saved.save)
    _serve(trial, "640@768x576", {"openvino": 300.0, "pytorch": 200.0}, 4)
    again = RuntimeTrial(["openvino", "pytorch"], decided=ChoiceFile(tmp_path, saved.host, saved.export_key).load())
    assert again.pick("640@768x576") == "pytorch"  # at once, no trial
    assert ChoiceFile(tmp_path, "cpu B|2 cores|1 threads|cpu", saved.export_key).load() == {}
    assert ChoiceFile(tmp_path, saved.host, "best-abc-openvino-2027.0").load() == {}
    data = json.loads((tmp_path / "runtime-choices.json").read_text())
    assert data == {saved.host: {saved.export_key: {"640@768x576": "pytorch"}}}


def test_a_damaged_or_foreign_choice_file_is_a_fresh_start(tmp_path):
    (tmp_path / "runtime-choices.json").write_text("{not json")
    assert ChoiceFile(tmp_path, "h", "k").load() == {}
    (tmp_path / "runtime-choices.json").write_text(json.dumps({"h": {"k": {"s": "tensorrt"}}}))
    trial = RuntimeTrial(["openvino", "pytorch"], decided=ChoiceFile(tmp_path, "h", "k").load())
    assert trial.decided() == {}  # a runtime this trial does not have is not a decision


def test_size_key_names_the_inference_size_and_the_frame():
    assert size_key(640, (576, 768, 3)) == "640@768x576"
    assert size_key(None, None) == "0@0x0"


def test_a_trial_needs_two_runtimes():
    with pytest.raises(ValueError):
        RuntimeTrial(["openvino"])
