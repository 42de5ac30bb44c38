"""The Docker deployment (deploy/compose.yaml, deploy/Dockerfile) as its users rely on it.

No Docker engine runs where these tests run, so they read the files and check what an
operator counts on: every service with code is in the suite on its port, waits for healthy
PostgreSQL and Kafka, can be scaled, keeps to its own database; Kafka runs KRaft and never
creates topics on its own. The database init script is run for real against a scratch
PostgreSQL cluster when the server binaries are installed.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
INIT_SCRIPT_DIR = DEPLOY / "postgres"

# The port table of the design (DESIGN.md, "Services"; API.md).
SERVICE_PORTS = {
    "identity": 8001,
    "messaging": 8002,
    "billing": 8003,
    "consent": 8004,
    "retention": 8005,
    "audit": 8006,
}
SERVICES_WITH_CODE = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
SERVICES_TO_COME = sorted(set(SERVICE_PORTS) - set(SERVICES_WITH_CODE))

# Services allowed to declare `healthcheck: {disable: true}`, and why: a one-shot job is waited
# for with service_completed_successfully instead; the collector image has no shell or client.
HEALTHCHECK_EXEMPT = {"otel-collector"}

_DEFAULTED_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z0-9_]+):?-(?P<default>[^}]*)\}")


def with_defaults(value: Any) -> str:
    """`value` as compose renders it when none of the variables it names is set."""
    return _DEFAULTED_VARIABLE.sub(lambda m: m.group("default"), str(value))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: with_defaults(value) for key, value in env.items()}


def one_shot_jobs(services: dict[str, dict[str, Any]]) -> set[str]:
    """Services that others wait on to *finish* (condition service_completed_successfully)."""
    return {
        name
        for service in services.values()
        for name, dependency in (service.get("depends_on") or {}).items()
        if isinstance(dependency, dict)
        and dependency.get("condition") == "service_completed_successfully"
    }


def named_volume_at(compose: dict[str, Any], service: dict[str, Any], target: str) -> str:
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if rest.split(":")[0] == target and source in (compose.get("volumes") or {}):
            return source
    raise AssertionError(f"no named volume mounted at {target}")


# --- the services -------------------------------------------------------------------------


def test_every_service_with_code_is_known_to_the_port_table() -> None:
    unknown = set(SERVICES_WITH_CODE) - set(SERVICE_PORTS)
    assert not unknown, f"services/{unknown} need a port here and a service in compose.yaml"


@pytest.mark.parametrize("name", SERVICES_WITH_CODE)
def test_every_service_with_code_runs_on_its_port_with_a_plain_up(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    port = SERVICE_PORTS[name]
    service = services.get(name)
    assert service is not None, f"services/{name} has code but no service in compose.yaml"
    assert "profiles" not in service, f"{name} has code: `docker compose up` must start it"
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / service["build"]["context"]).resolve() == ROOT
    assert service["build"]["args"]["SERVICE"] == name
    assert int(service["build"]["args"]["PORT"]) == port
    assert int(environment(service)["CONFIDE_HTTP_PORT"]) == port
    assert environment(service)["CONFIDE_SERVICE_NAME"] == name
    assert [int(p["target"]) for p in service["ports"]] == [port]


@pytest.mark.parametrize("name", SERVICES_TO_COME)
def test_services_without_code_stay_out_of_a_plain_up(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    service = services.get(name)
    assert service is not None, f"{name} should already be sketched in compose.yaml"
    assert service.get("profiles") == ["later"]
    assert int(environment(service)["CONFIDE_HTTP_PORT"]) == SERVICE_PORTS[name]
    started_by_default = [s for n, s in services.items() if not s.get("profiles")]
    assert not any(name in (s.get("depends_on") or {}) for s in started_by_default)


@pytest.mark.parametrize("name", sorted(SERVICE_PORTS))
def test_a_service_waits_for_healthy_postgres_and_kafka_and_for_its_topics(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    depends_on = services[name]["depends_on"]
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["kafka"]["condition"] == "service_healthy"
    assert depends_on["topics"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", sorted(SERVICE_PORTS))
def test_a_service_reaches_only_its_own_database_kafka_and_the_collector(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], name: str
) -> None:
    env = environment(services[name])
    url = urlsplit(env["CONFIDE_DATABASE_URL"])
    assert url.scheme == "postgresql+psycopg"
    assert (url.username, url.hostname, url.port, url.path) == (name, "postgres", 5432, f"/{name}")
    # The password the service presents is the one the init script gives its role.
    postgres_env = environment(services["postgres"])
    assert url.password == postgres_env[f"CONFIDE_{name.upper()}_DB_PASSWORD"]
    assert env["CONFIDE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["CONFIDE_OTEL_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"


def test_each_service_keeps_its_key_encryption_key_on_a_volume_of_its_own(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    volumes = {}
    for name in SERVICE_PORTS:
        kek_file = Path(environment(services[name])["CONFIDE_KEK_FILE"])
        volumes[name] = named_volume_at(compose, services[name], str(kek_file.parent))
    assert len(set(volumes.values())) == len(volumes), volumes
    assert not set(volumes.values()) & {"postgres-data", "kafka-data"}


def test_no_service_has_a_fixed_name_or_host_port_so_each_can_scale(
    services: dict[str, dict[str, Any]],
) -> None:
    assert not [name for name, s in services.items() if "container_name" in s]
    for name in SERVICE_PORTS:
        for port in services[name].get("ports", []):
            assert isinstance(port, dict) and "published" not in port, (
                f"{name} publishes a fixed host port; `--scale {name}=3` would clash on it"
            )


def test_every_long_running_service_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    exempt = HEALTHCHECK_EXEMPT | one_shot_jobs(services)
    for name, service in services.items():
        healthcheck = service.get("healthcheck")
        assert healthcheck, f"{name} has no healthcheck"
        if healthcheck.get("disable"):
            assert name in exempt, f"{name} must not disable its healthcheck"
        else:
            assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}


@pytest.mark.parametrize("name", sorted(SERVICE_PORTS))
def test_a_service_healthcheck_probes_healthz_on_its_own_port(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    probe = " ".join(services[name]["healthcheck"]["test"])
    assert "/healthz" in probe
    assert "CONFIDE_HTTP_PORT" in probe


# --- Kafka, topics, collector --------------------------------------------------------------


def test_kafka_runs_kraft_on_one_node_and_never_creates_topics_on_its_own(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    kafka = services["kafka"]
    env = environment(kafka)
    assert kafka["image"] == "apache/kafka:4.1.1"
    assert not any("zookeeper" in name.lower() for name in services)
    assert not any("ZOOKEEPER" in key for key in env)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://:9092" in env["KAFKA_LISTENERS"]
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    assert named_volume_at(compose, kafka, env["KAFKA_LOG_DIRS"]) == "kafka-data"


def test_the_topics_job_creates_the_topics_once_kafka_is_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    topics = services["topics"]
    assert topics["command"] == ["python", "-m", "confide_toolkit.topics_cli", "create"]
    assert topics["build"]["dockerfile"] == "deploy/Dockerfile"
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert environment(topics)["CONFIDE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert topics.get("restart") == "no"
    assert "topics" in one_shot_jobs(services)


def test_the_collector_receives_otlp_and_batches_into_the_debug_exporter(
    services: dict[str, dict[str, Any]],
) -> None:
    collector = services["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib")
    mounted = {str(v).split(":")[0]: str(v).split(":")[1] for v in collector["volumes"]}
    assert mounted["./otel-collector.yaml"] == "/etc/otelcol-contrib/config.yaml"

    config = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for pipeline in pipelines.values():
        assert pipeline["receivers"] == ["otlp"]
        assert "batch" in pipeline["processors"]
        assert pipeline["exporters"] == ["debug"]
        assert all(p in config["processors"] for p in pipeline["processors"])


# --- PostgreSQL ----------------------------------------------------------------------------


def init_scripts() -> list[Path]:
    return sorted(p for p in INIT_SCRIPT_DIR.iterdir() if p.suffix in {".sh", ".sql"})


def test_postgres_is_initialised_by_the_scripts_under_deploy_postgres(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "./postgres:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]
    assert named_volume_at(compose, postgres, "/var/lib/postgresql/data") == "postgres-data"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert init_scripts(), "no init script under deploy/postgres/"
    for script in init_scripts():
        if script.suffix == ".sh":
            # Executable, so the entrypoint runs it in its own shell instead of sourcing it.
            assert script.stat().st_mode & stat.S_IXUSR, f"{script.name} is not executable"


def test_the_init_script_names_every_service_and_locks_out_public() -> None:
    text = "\n".join(script.read_text() for script in init_scripts())
    for name in SERVICE_PORTS:
        assert re.search(rf"\b{name}\b", text), f"the init script does not create {name}"
    assert "CREATE ROLE" in text
    assert re.search(r"CREATE DATABASE .* OWNER", text)
    assert re.search(r"REVOKE (ALL|CONNECT)\b.* FROM PUBLIC", text)


@pytest.fixture(scope="module")
def scratch_postgres() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL cluster on a Unix socket, initialised by deploy/postgres/*.sh
    exactly as the postgres image's entrypoint would; yields the environment to reach it."""
    binaries = {tool: shutil.which(tool) for tool in ("initdb", "pg_ctl", "psql", "bash")}
    missing = [tool for tool, path in binaries.items() if path is None]
    if missing:
        pytest.skip(f"PostgreSQL server binaries not installed: {', '.join(missing)}")
    run_as_owner: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="confide-pg-init-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            pytest.skip("running as root and no 'postgres' user to run the server as")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        run_as_owner = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]
    data = base / "data"
    env = {
        **os.environ,
        "PGHOST": str(base),
        "PGPORT": "5432",
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": "postgres",
        # One password with a quote in it, to show the script quotes what it is given.
        "CONFIDE_CONSENT_DB_PASSWORD": "it's-a-secret",
    }

    def run(*command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, text=True, env=env)

    initdb, pg_ctl, bash = (str(binaries[tool]) for tool in ("initdb", "pg_ctl", "bash"))
    run(*run_as_owner, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
    server_options = f"-k {base} -p 5432 -c listen_addresses=''"
    run(
        *run_as_owner,
        pg_ctl,
        "-D",
        str(data),
        "-l",
        str(base / "log"),
        "-w",
        "-o",
        server_options,
        "start",
    )
    try:
        for script in init_scripts():
            run(bash, str(script))
        yield env
    finally:
        subprocess.run(
            [*run_as_owner, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            env=env,
        )
        shutil.rmtree(base, ignore_errors=True)


def psql(
    env: dict[str, str], user: str, database: str, sql: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "psql",
            "--no-psqlrc",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            user,
            "-d",
            database,
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        env=env,
    )


def test_the_init_script_gives_each_service_a_role_owning_its_own_database(
    scratch_postgres: dict[str, str],
) -> None:
    names = ",".join(f"'{name}'" for name in SERVICE_PORTS)
    owners = psql(
        scratch_postgres,
        "postgres",
        "postgres",
        f"SELECT datname || '=' || pg_get_userbyid(datdba) FROM pg_database "
        f"WHERE datname IN ({names}) ORDER BY 1",
    )
    assert owners.returncode == 0, owners.stderr
    assert owners.stdout.split() == sorted(f"{name}={name}" for name in SERVICE_PORTS)
    roles = psql(
        scratch_postgres,
        "postgres",
        "postgres",
        f"SELECT rolname FROM pg_authid WHERE rolname IN ({names}) AND rolcanlogin "
        f"AND NOT (rolsuper OR rolcreatedb OR rolcreaterole) AND rolpassword IS NOT NULL",
    )
    assert sorted(roles.stdout.split()) == sorted(SERVICE_PORTS)


@pytest.mark.parametrize("name", sorted(SERVICE_PORTS))
def test_a_service_role_can_connect_to_its_own_database_and_no_other(
    scratch_postgres: dict[str, str], name: str
) -> None:
    own = psql(scratch_postgres, name, name, "SELECT current_user")
    assert own.returncode == 0, own.stderr
    others = [other for other in SERVICE_PORTS if other != name] + ["postgres", "template1"]
    for other in others:
        refused = psql(scratch_postgres, name, other, "SELECT 1")
        assert refused.returncode != 0, f"{name} could connect to {other}"
        assert "permission denied for database" in refused.stderr


# --- the image -----------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for statement in logical:
        keyword, _, arguments = statement.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), " ".join(arguments.split())))
    return stages


def test_the_image_builds_any_service_of_the_workspace_from_a_service_build_arg() -> None:
    stages = dockerfile_stages()
    global_args = " ".join(args for keyword, args in stages[0] if keyword == "ARG")
    assert "python:3.11-slim" in global_args
    syncs = [
        args
        for stage in stages
        for keyword, args in stage
        if keyword == "RUN" and "uv sync" in args
    ]
    assert syncs and all("--frozen" in s and "--no-dev" in s for s in syncs)
    assert any('--package "confide-${SERVICE}"' in s for s in syncs)
    building = [stage for stage in stages if any(args in syncs for _, args in stage)]
    assert all(("ARG", "SERVICE") in stage for stage in building)


def test_the_image_runs_its_service_as_a_non_root_user_with_a_healthcheck() -> None:
    final = dockerfile_stages()[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    healthchecks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "/healthz" in healthchecks[0] and "urllib" in healthchecks[0]
    command = [args for keyword, args in final if keyword == "CMD"]
    assert command and "python -m" in command[-1] and "confide_${SERVICE}" in command[-1]


def test_local_state_stays_out_of_the_build_context() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".stack", ".venv", "**/__pycache__"} <= ignored


# --- Docker itself, where it is installed -------------------------------------------------


@pytest.mark.parametrize("profiles", [[], ["--profile", "later"]], ids=["default", "later"])
def test_docker_compose_accepts_the_file(profiles: list[str]) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker CLI is not installed, so `docker compose config` cannot run")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed (`docker compose version` fails)")
    # `config` parses, interpolates and validates without contacting an engine.
    checked = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), *profiles, "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
