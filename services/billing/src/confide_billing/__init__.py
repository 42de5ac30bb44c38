"""Confide's billing service."""
