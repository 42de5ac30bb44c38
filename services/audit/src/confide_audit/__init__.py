"""Confide's audit service."""
