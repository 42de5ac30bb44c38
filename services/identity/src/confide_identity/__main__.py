"""`python -m confide_identity`: serve identity."""

from confide_identity.app import main

main()
