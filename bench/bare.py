"""The bare endpoint of scenario 2 as a program (`python -m bench.bare`)."""

from bench.http_load import serve_bare

serve_bare()
