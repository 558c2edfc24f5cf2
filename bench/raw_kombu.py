"""The plumbing baseline of bench/pipeline.py: a raw kombu round trip with the pipeline's JPEG
payloads and window, no Celery and no vdag code. The far end is a process of its own
(`python -m bench.raw_kombu URL Q_IN Q_OUT`) that decodes each JPEG and replies small."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import msgpack

from bench.common import AMQP_URL, CpuMeter, delete_queues, rabbit_pids, unique_node

WINDOW = 8  # frames in flight: the pipeline's max_in_flight and the raw round trip's window


def raw_consumer(url: str, q_in: str, q_out: str, durable: str = "transient") -> None:
    """The raw round trip's far end (a separate process): decode each JPEG, reply small."""
    import cv2
    import numpy as np
    from kombu import Connection, Consumer, Exchange, Producer, Queue

    ex = Exchange("vdag.rawbench", type="direct", durable=False)
    qin = Queue(q_in, ex, routing_key=q_in, durable=durable == "durable")
    with Connection(url) as conn:
        producer = Producer(conn.channel(), exchange=ex)

        def on_message(message):
            body = message.body
            if body == b"stop":
                message.ack()
                raise SystemExit(0)
            img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            reply = msgpack.packb({"w": int(img.shape[1]), "h": int(img.shape[0]),
                                   "b": float(img.mean()), "seq": message.headers.get("seq")})
            producer.publish(reply, routing_key=q_out, serializer=None,  # declared by the bench
                             content_type="application/x-msgpack", content_encoding="binary")
            message.ack()

        with Consumer(conn.channel(), queues=[qin], on_message=on_message, prefetch_count=WINDOW):
            print("ready", flush=True)
            while True:
                conn.drain_events(timeout=60)


def raw_round_trip_fps(payloads: list[bytes], window: int = WINDOW, durable: bool = False) -> tuple[float, dict]:
    """Raw kombu: publish each JPEG (at most `window` unanswered), a consumer process decodes it
    and replies with a small msgpack map, this process collects the replies. `durable`: on durable
    queues, like the pipeline's (a broker restart keeps the frames in them), where RabbitMQ stores
    every persistent message; on transient ones (the plumbing baseline) it keeps them in memory.
    Returns (frames/s, CPU ms per frame by process)."""
    import socket
    import subprocess

    from kombu import Connection, Consumer, Exchange, Producer, Queue

    tag = unique_node("raw")
    q_in, q_out = f"{tag}.in", f"{tag}.out"
    ex = Exchange("vdag.rawbench", type="direct", durable=False)
    qin = Queue(q_in, ex, routing_key=q_in, durable=durable)
    qout = Queue(q_out, ex, routing_key=q_out, durable=durable)
    with Connection(AMQP_URL) as conn:
        ch = conn.channel()
        qin(ch).declare()
        qout(ch).declare()
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen([sys.executable, "-m", "bench.raw_kombu", AMQP_URL, q_in, q_out,
                             "durable" if durable else "transient"],
                            cwd=root, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": root})
    try:
        assert proc.stdout.readline().strip() == b"ready"
        state = {"done": 0}

        def on_reply(message):
            state["done"] += 1
            message.ack()

        meter = CpuMeter({"producer": [os.getpid()], "consumer": [proc.pid], "rabbit": rabbit_pids()})
        with Connection(AMQP_URL) as conn:
            producer = Producer(conn.channel(), exchange=ex)
            with Consumer(conn.channel(), queues=[qout], on_message=on_reply, prefetch_count=64), meter:
                sent = 0
                t0 = time.perf_counter()
                while state["done"] < len(payloads):
                    while sent < len(payloads) and sent - state["done"] < window:
                        producer.publish(payloads[sent], routing_key=q_in, serializer=None,
                                         content_type="image/jpeg", content_encoding="binary",
                                         headers={"seq": sent}, delivery_mode=2)
                        sent += 1
                    try:
                        conn.drain_events(timeout=10)
                    except socket.timeout:
                        raise RuntimeError("raw round trip stalled") from None
                elapsed = time.perf_counter() - t0
            producer.publish(b"stop", routing_key=q_in, serializer=None, content_encoding="binary")
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        delete_queues(q_in, q_out)
    return len(payloads) / elapsed, meter.per_frame_ms(len(payloads))


if __name__ == "__main__":
    raw_consumer(*sys.argv[1:5])
