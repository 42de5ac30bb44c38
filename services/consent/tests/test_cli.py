"""The operator command that registers a development stack's recipients."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from confide_consent import cli
from confide_toolkit.database import libpq_url

pytestmark = pytest.mark.integration


def recipients_in(database_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute("SELECT recipient_id::text, name FROM recipients ORDER BY name")
        return [(str(recipient_id), name) for recipient_id, name in rows]


def test_seed_dev_recipients_registers_them_once(
    database_url: str,
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CONFIDE_DATABASE_URL", database_url)
    monkeypatch.setenv("CONFIDE_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("CONFIDE_KEK_FILE", str(tmp_path / "kek.json"))

    assert cli.main(["seed-dev-recipients"]) == 0
    # The migrations register no recipient: every one there is the command's.
    assert recipients_in(database_url) == [
        (str(cli.NORTHSIDE_CLINIC), "Northside Community Health Clinic"),
        (str(cli.RIVERSIDE_HOSPITAL), "Riverside Psychiatric Hospital"),
    ]
    assert capsys.readouterr().out.count("registered ") == 2

    assert cli.main(["seed-dev-recipients"]) == 0
    assert len(recipients_in(database_url)) == 2
    assert "already registered" in capsys.readouterr().out
