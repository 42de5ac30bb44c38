"""`python -m confide_audit [serve|verify|replay]`: see `confide_audit.cli`."""

from confide_audit.cli import main

main()
