"""/api/v1/nodes and /api/v1/services: what the cluster has."""
from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from services.registry import all_services
from tracker.web.api.schemas import NodeList, NodeOut, ServiceList, ServiceOut
from tracker.web.context import tracker_context

bp = APIBlueprint(
    "api_cluster",
    __name__,
    url_prefix="/api/v1",
    abp_tags=[Tag(name="cluster", description="nodes and DNN services")],
)


@bp.get("/nodes", summary="Registered nodes with their last heartbeat", responses={200: NodeList})
def list_nodes():
    nodes = tracker_context().store.list_nodes()
    items = [NodeOut.model_validate(n.model_dump()) for n in nodes]
    return jsonify(NodeList(items=items).model_dump(mode="json"))


@bp.get("/services", summary="DNN services a stage can use", responses={200: ServiceList})
def list_services():
    services = sorted(all_services().values(), key=lambda s: s.name)
    return jsonify(ServiceList(items=[ServiceOut(**s.describe()) for s in services]).model_dump(mode="json"))
