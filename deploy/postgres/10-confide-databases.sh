#!/usr/bin/env bash
# Run once by the postgres image's entrypoint, on an empty data volume: one database and one
# login role per Confide service, each role owning only its own database. CONNECT is revoked
# from PUBLIC on every database (the services' and the built-in ones), so a service's role can
# reach its own database and no other. Passwords come from CONFIDE_<SERVICE>_DB_PASSWORD,
# with a "<service>-dev" default for local use.
#
# Executable so the entrypoint runs it in its own shell rather than sourcing it.
set -eo pipefail

services="identity messaging billing consent retention audit"

run_psql() {
    psql --no-psqlrc -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" \
        --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" "$@"
}

for service in ${services}; do
    password_var="CONFIDE_$(printf '%s' "${service}" | tr '[:lower:]' '[:upper:]')_DB_PASSWORD"
    password="${!password_var:-${service}-dev}"
    # psql variables (:"name" quotes an identifier, :'name' a literal), so a password holding
    # quotes cannot break out of the statement.
    run_psql --set=service="${service}" --set=password="${password}" <<'SQL'
CREATE ROLE :"service" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION
    PASSWORD :'password';
CREATE DATABASE :"service" OWNER :"service";
REVOKE ALL ON DATABASE :"service" FROM PUBLIC;
SQL
    echo "confide: created database and role ${service}"
done

# Every database grants CONNECT to PUBLIC by default; without this a service's role could still
# log in to the maintenance databases. (Superusers are unaffected.)
run_psql --set=maintenance_db="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" <<'SQL'
REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE :"maintenance_db" FROM PUBLIC;
SQL
