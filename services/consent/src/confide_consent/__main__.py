"""`python -m confide_consent`: serve the consent service."""

from confide_consent.app import main

main()
