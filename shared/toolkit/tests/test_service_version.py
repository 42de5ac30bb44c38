"""Each service reports the version of its own package: in its OpenAPI and AsyncAPI documents and
on /healthz, so that an operator can tell which release answers."""

from importlib import metadata
from pathlib import Path

import httpx
import pytest
from confide_toolkit.service import UNPACKAGED_VERSION, Service
from confide_toolkit.settings import ServiceSettings


def _service(name: str, tmp_path: Path) -> Service:
    settings = ServiceSettings(
        service_name=name,
        # Never reached: the documents and /healthz need no database or broker.
        database_url="postgresql+psycopg://probe@127.0.0.1:1/none",
        kek_file=tmp_path / "kek.json",
    )
    return Service(settings, migrations=tmp_path)


async def _reported_versions(service: Service) -> dict[str, str]:
    app = service.create_app(title="Versioned", description="version test", routers=[], deps=None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        openapi = (await client.get("/openapi.json")).json()
        asyncapi = (await client.get("/asyncapi.json")).json()
        health = (await client.get("/healthz")).json()
    return {
        "openapi": openapi["info"]["version"],
        "asyncapi": asyncapi["info"]["version"],
        "healthz": health["version"],
    }


@pytest.mark.parametrize("name", ["consent", "identity"])
async def test_a_service_reports_the_version_of_its_package(name: str, tmp_path: Path) -> None:
    package_version = metadata.version(f"confide-{name}")

    reported = await _reported_versions(_service(name, tmp_path))

    assert reported == {
        "openapi": package_version,
        "asyncapi": package_version,
        "healthz": package_version,
    }


async def test_a_service_without_a_package_says_so(tmp_path: Path) -> None:
    reported = await _reported_versions(_service("probe", tmp_path))

    assert set(reported.values()) == {UNPACKAGED_VERSION}
