#!/bin/bash
# First start of the compose PostgreSQL (docker-entrypoint-initdb.d), as the superuser: the
# services' role `chat` (it owns its database and the schema the migrations create, and nothing
# more: no CREATEROLE, which on PostgreSQL 15 lets a role grant itself pg_execute_server_program),
# the read-only reporting role `chat_reporting` that migration 0002 grants the views to (made
# here, so the migration creates no role; no password until an administrator sets one, see
# docs/reporting.md), and the database. `chat-worker migrate` (service `migrate`) then applies
# the schema as `chat`.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -v pw="$CHAT_PG_PASSWORD" <<'EOSQL'
CREATE ROLE chat LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS PASSWORD :'pw';
CREATE ROLE chat_reporting LOGIN NOINHERIT;
CREATE DATABASE chat OWNER chat;
EOSQL
