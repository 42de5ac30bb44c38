"""The operator command that creates compliance staff accounts."""

import io
import sys
import uuid

import pytest
from confide_identity import cli
from confide_toolkit.clock import FrozenClock

from .conftest import SettingsFactory, running_identity

pytestmark = pytest.mark.integration


async def test_create_staff_makes_a_compliance_account_that_signs_in(
    make_settings: SettingsFactory,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings()
    email = f"auditor.{uuid.uuid4().hex[:8]}@example.org"
    password = "quartz-willow-beacon-63"

    account_id = await cli.create_staff(settings, email, "Auditor", password)

    async with running_identity(settings, clock) as identity:
        response = await identity.sign_in({"email": email, "password": password})
        me = await identity.client.get(
            "/v1/accounts/me",
            headers={"Authorization": f"Bearer {response.json()['access_token']}"},
        )
    assert me.json()["role"] == "compliance"
    assert me.json()["user_id"] == account_id


def test_create_staff_refuses_a_weak_password_read_from_stdin(
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings()
    for name, value in settings.model_dump(mode="json").items():
        monkeypatch.setenv(f"CONFIDE_{name.upper()}", str(value))
    monkeypatch.setattr(sys, "stdin", io.StringIO("password1234\n"))

    status = cli.main(["create-staff", "--email", "weak.staff@example.org"])

    assert status == 2
    assert "password1234" not in capsys.readouterr().err
