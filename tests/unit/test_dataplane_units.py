"""Unit tests of the data plane's pure parts: knobs, envelope, generator, reorder buffer."""
from __future__ import annotations

import threading

import msgpack
import pytest

from services.aggregator import ReorderBuffer, record_from_envelope, rendered_jpeg
from services.codec import BadEnvelope, Envelope, Hop, decode_envelope, encode_envelope
from services.generator import ActivePlan, FrameGenerator, InFlightWindow
from services.records import FrameRecord
from services.sources import SourceError, open_source
from services.video_conf import FrameSkipper, VideoConf, decode_jpeg, target_size
from tests.support.sources import ListSource

HOP = Hop(stage="probe", service="frame_probe", node="cloud", inputs={"image": "generator.image"})


def _record(seq: int, job: str = "j") -> FrameRecord:
    return FrameRecord(job_uid=job, seq=seq, plan_id=1, capture_ts=seq / 10, width=1, height=1,
                       latency_s=0.01, outputs={})


@pytest.mark.parametrize("res,src,expected", [
    ("360p", (1280, 720), (640, 360)), ("720p", (768, 576), (768, 576)),
    ("480p", (768, 576), (640, 480)), ("source", (768, 576), (768, 576)), ("1080p", (1280, 720), (1280, 720)),
])
def test_target_size_keeps_aspect_and_never_upscales(res, src, expected):
    assert target_size(res, *src) == expected


def test_fps_knob_skips_on_source_time():
    skipper, conf = FrameSkipper(), VideoConf(fps=5)
    kept = [i for i in range(30) if skipper.keep(conf, i / 30)]
    assert len(kept) == 5 and kept[:2] == [0, 6]


def test_nskip_knob_keeps_one_in_n_plus_one():
    skipper, conf = FrameSkipper(), VideoConf(nskip=2)
    assert [i for i in range(9) if skipper.keep(conf, i / 30)] == [0, 3, 6]


def test_fps_and_nskip_together_are_rejected():
    with pytest.raises(ValueError, match="either fps or nskip"):
        VideoConf(fps=5, nskip=1)


def test_envelope_round_trip_and_strict_decoding():
    env = Envelope(job="j", seq=3, plan=1, capture_ts=0.3, sent_at=1.0, width=2, height=2, image=b"\xff\xd8",
                   route=[HOP])
    assert decode_envelope(encode_envelope(env)) == env
    for bad in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"v": 9}), msgpack.packb({"v": 1, "job": "j"}), "str"):
        with pytest.raises(BadEnvelope):
            decode_envelope(bad)


def test_reorder_emits_in_order_dedups_and_declares_gaps_lost():
    buf = ReorderBuffer(wait_s=1.0)
    buf.start_job("j", 0)
    assert [r.seq for r in buf.push(_record(1), now=0.0).records] == []
    assert [r.seq for r in buf.push(_record(0), now=0.1).records] == [0, 1]
    assert buf.push(_record(1), now=0.2).duplicates == 1
    assert buf.push(_record(3), now=0.3).records == []
    assert buf.expire(now=0.5) == []
    out = buf.expire(now=1.4)
    assert [(r.seq, r.lost) for r in out] == [(2, True), (3, False)]
    assert buf.stats("j") == {"frames_out": 3, "frames_lost": 1, "duplicates": 1, "frames_late": 0,
                              "reorder_pending": 0, "restart_unused": 0}
    # Frame 2 turns up after all (a cold model load held it): late, not lost, and not a duplicate.
    late = buf.push(_record(2), now=2.0)
    assert [r.seq for r in late.late] == [2] and late.records == [] and late.duplicates == 0
    assert buf.push(_record(2), now=2.1).duplicates == 1, "once stored, a redelivery is a duplicate again"
    assert buf.stats("j") == {"frames_out": 4, "frames_lost": 0, "duplicates": 2, "frames_late": 1,
                              "reorder_pending": 0, "restart_unused": 0}


def test_after_a_restart_numbers_known_sent_are_waited_for_briefly_and_unused_ones_are_not_lost():
    from services.aggregator import RESTART_GAP_WAIT_S

    buf = ReorderBuffer(wait_s=15.0)
    # 10..19 were sent by the old process (stored next, or lost); 20..49 reserved, maybe never used.
    buf.start_job("j", 10, maybe_unused=(20, 50))
    assert buf.push(_record(10), now=0.0).records[0].seq == 10      # an old frame, in order
    assert [r.seq for r in buf.push(_record(21), now=0.05).records] == [21], "used after all: stored as it comes"
    assert buf.push(_record(50), now=0.1).records == []             # the new generator's first
    assert buf.expire(now=0.1 + RESTART_GAP_WAIT_S / 2) == []
    out = buf.expire(now=0.2 + RESTART_GAP_WAIT_S)                  # not the 15-s reorder wait
    assert [r.seq for r in out if r.lost] == list(range(11, 20)), "known sent, never came: lost"
    assert out[-1].seq == 50 and not out[-1].lost
    assert buf.stats("j")["restart_unused"] == 29 and buf.stats("j")["frames_lost"] == 9
    assert [r.seq for r in buf.push(_record(12), now=5.0).late] == [12], "a straggler is still stored"
    assert [r.seq for r in buf.push(_record(30), now=5.1).records] == [30]
    assert buf.push(_record(30), now=5.2).duplicates == 1 and buf.push(_record(21), now=5.3).duplicates == 1
    assert buf.stats("j")["restart_unused"] == 28


def test_an_edge_generator_restart_is_stepped_over_when_the_cloud_is_told():
    buf = ReorderBuffer(wait_s=15.0)
    buf.start_job("j", 0)
    assert [r.seq for r in buf.push(_record(0), now=0.0).records] == [0]
    buf.generator_restarted("j", (3, 1024))                         # 1 and 2 sent, 3.. maybe not
    assert buf.push(_record(1024), now=0.1).records == []
    assert [r.seq for r in buf.push(_record(1), now=0.2).records] == [1]
    assert [r.seq for r in buf.push(_record(2), now=0.3).records] == [2, 1024], "no wait for 3..1023"
    assert buf.stats("j")["frames_lost"] == 0


def test_window_blocks_then_expires_stale_entries():
    win = InFlightWindow(2, expire_s=0.05)
    assert win.try_add(0) and win.try_add(1) and not win.try_add(2)
    win.release(0)
    assert win.try_add(2)
    threading.Event().wait(0.06)
    assert win.try_add(3) and win.expired == 2


def test_generator_applies_a_new_plan_at_the_next_frame_and_clips():
    sent: list[Envelope] = []
    plans = {"p": ActivePlan(1, VideoConf(), (HOP,))}

    def dispatch(env):
        sent.append(env)
        if env.seq == 1:
            plans["p"] = ActivePlan(2, VideoConf(resolution="360p", quality=50), (HOP,))

    gen = FrameGenerator("j", ListSource(4), lambda: plans["p"], dispatch, InFlightWindow(100),
                         threading.Event(), pace=0, clip_len=2)
    gen.run()
    assert [e.plan for e in sent] == [1, 1, 2, 2]
    assert [len(e.clip) for e in sent] == [1, 2, 2, 2]
    assert decode_jpeg(sent[0].image).shape == (48, 64, 3)


@pytest.mark.parametrize("resolution,grade,profiled", [
    ("360p", None, 4),    # below the source resolution: every 2nd detected frame runs golden too
    ("source", None, 0),  # at the source, no grades: its own detection is the golden one
    ("source", "m", 0),   # at the golden grade
    ("source", "n", 4),   # a smaller grade than golden: worth measuring
])
def test_golden_profiling_only_where_the_frame_differs_from_golden(resolution, grade, profiled):
    sent: list[Envelope] = []
    hop = Hop(stage="detect", service="yolo_detection", node="cloud", inputs={"image": "generator.image"},
              params={"grade": grade} if grade else {})
    plan = ActivePlan(1, VideoConf(resolution=resolution), (hop,), profile_every=2, golden_grade="m")
    gen = FrameGenerator("j", ListSource(8, size=(640, 480)), lambda: plan, sent.append, InFlightWindow(100),
                         threading.Event(), pace=0)
    gen.run()
    assert sum(e.profile for e in sent) == profiled
    assert all((e.golden_image is not None) == e.profile for e in sent)


def test_generator_drops_and_counts_when_the_window_is_full():
    gen = FrameGenerator("j", ListSource(10), lambda: ActivePlan(1, VideoConf(), (HOP,)), lambda e: None,
                         InFlightWindow(3), threading.Event(), pace=0, backpressure="drop")
    gen.run()
    assert (gen.stats.sent, gen.stats.dropped, gen.stats.peak_in_flight) == (3, 7, 3)


def test_generator_sends_only_numbers_it_could_reserve_and_counts_the_rest():
    sent: list[Envelope] = []
    gen = FrameGenerator("j", ListSource(10), lambda: ActivePlan(1, VideoConf(), (HOP,)), sent.append,
                         InFlightWindow(100), threading.Event(), pace=0, first_seq=40, reserve=lambda seq: seq < 44)
    gen.run()
    assert [e.seq for e in sent] == [40, 41, 42, 43] and gen.seq == 44
    assert (gen.stats.sent, gen.stats.dropped, gen.stats.unreserved) == (4, 6, 6)


def test_rendered_jpeg_prefers_the_last_rendered_image():
    env = Envelope(job="j", seq=0, plan=1, capture_ts=0, sent_at=0, width=1, height=1, image=b"raw")
    assert rendered_jpeg(env) == b"raw"
    from services.codec import StageTiming

    env.timings = [StageTiming(stage="r", node="n", worker="w", enqueued=0, started=0, finished=0)]
    env.outputs = {"r": {"image": b"drawn", "n": 1}}
    assert rendered_jpeg(env) == b"drawn"
    rec = record_from_envelope(env, received_at=0.5)
    assert rec.outputs == {"r": {"n": 1}}


def test_unopenable_sources_raise_source_error(tmp_path):
    with pytest.raises(SourceError):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError):
        open_source("synthetic://hugexbig")


@pytest.mark.parametrize("segment_every_s,pipeline,profile_every,segments", [
    (12.0, ["person_detection", "object_count"], 0, 12.0),  # segments score it: nothing on the frame path
    (0.0, ["person_detection", "object_count"], 20, 0.0),   # segments off: the frame path measures
    (12.0, ["face_detection"], 0, 0.0),                     # boxes without `detections`: nothing to score
])
def test_accuracy_is_profiled_off_the_frame_path_where_segments_score_the_detector(
        tmp_path, segment_every_s, pipeline, profile_every, segments):
    from scheduler.interface import Plan, StageMapping
    from services.dag import dag_from_pipeline
    from services.settings import Settings
    from tracker.runtime.generators import active_plan

    settings = Settings(node="n", data_dir=tmp_path, profile_every=20, profile_segment_every_s=segment_every_s)
    dag = dag_from_pipeline(pipeline)
    plan = Plan(video_conf=VideoConf(), flow_mapping={s.name: StageMapping(node="n") for s in dag.stages})
    active = active_plan(settings, dag, 1, plan, planned=True)
    assert (active.profile_every, active.segment_every_s) == (profile_every, segments)
    assert active.urgent_segments == settings.profile_urgent_segments == 3
    fixed = active_plan(settings, dag, 1, plan, planned=False)
    assert (fixed.profile_every, fixed.segment_every_s) == (0, 0.0)
