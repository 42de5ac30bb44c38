"""`python -m confide_messaging`: serve the messaging service."""

from confide_messaging.app import main

main()
