"""Queue names. One durable queue per node, one results queue, one ack queue per generator node."""
from __future__ import annotations

from kombu import Exchange, Queue

STAGE_TASK = "vdag.run_stage"
RESULTS_QUEUE = "vdag.results"
_direct = Exchange("vdag", type="direct", durable=True)


def node_queue_name(node: str) -> str:
    return f"vdag.node.{node}"


def node_queue(node: str) -> Queue:
    name = node_queue_name(node)
    return Queue(name, _direct, routing_key=name, durable=True)


def service_reply_queue_name(node: str) -> str:
    """Where a node's tracker gets the answers to its service calls (tasks.service_call)."""
    return f"vdag.service.{node}"


def results_queue(name: str = RESULTS_QUEUE) -> Queue:
    return Queue(name, _direct, routing_key=name, durable=True)


def ack_queue(node: str) -> Queue:
    # Acks only free generator window slots; losing them on a broker restart is harmless.
    name = f"vdag.acks.{node}"
    return Queue(name, _direct, routing_key=name, durable=False, auto_delete=False)


EXCHANGE = _direct
