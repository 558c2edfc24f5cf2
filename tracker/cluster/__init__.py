"""Nodes and how they stay together: this node's registration, heartbeats and upkeep, the
edge agent, worker-pool elasticity and the pseudo-distributed supervisor."""
