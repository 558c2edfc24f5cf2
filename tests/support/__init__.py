"""Helpers the test tiers share (fixtures live in the conftest.py files)."""
