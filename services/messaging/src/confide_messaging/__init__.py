"""Confide messaging service: conversations, messages, session notes and disclosures."""
