"""`python -m confide_retention`: serve the retention service."""

from confide_retention.app import main

main()
