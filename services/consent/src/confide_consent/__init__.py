"""Confide consent service: the consent ledger, its receipts, and recipients."""
