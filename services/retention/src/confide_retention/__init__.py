"""Confide's retention service."""
