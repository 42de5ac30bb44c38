"""`python -m confide_billing`: serve the billing service."""

from confide_billing.app import main

main()
