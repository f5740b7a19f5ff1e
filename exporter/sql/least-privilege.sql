-- tw-exporter: a least-privilege PostgreSQL role for the exporter.
--
-- What the role may do: connect to THIS database, use the schema, and SELECT from the four
-- tables the exporter reads (tw_users, tw_tweets, tw_hashtags, tw_tweet_hashtags). Nothing
-- else: no INSERT/UPDATE/DELETE/TRUNCATE, no CREATE in the schema, no other table. As a
-- backstop for anyone who logs in with this role by hand, every session of the role also
-- defaults to read-only transactions and a 10 s statement_timeout (the exporter sets its own,
-- shorter timeouts per connection on top of these).
--
-- Run it as a user that may create roles and grant on the tables (the database owner or an
-- admin), connected to the exporter's database:
--
--   psql "postgresql://admin@db:5432/app" -v ON_ERROR_STOP=1 \
--        -v role=tw_exporter -v schema=public -f sql/least-privilege.sql
--
-- then give the role a password without it passing through argv, shell history or the server
-- log (psql hashes it client-side with SCRAM):
--
--   psql "postgresql://admin@db:5432/app" -c '\password tw_exporter'
--
-- Alternatively pass -v password=... (or a pre-computed 'SCRAM-SHA-256$...' verifier) and the
-- script sets it; an empty or absent password leaves the role's password unchanged.
--
-- Variables (all optional): role (default tw_exporter), schema (default public),
-- password (default: unchanged), connection_limit (default 10: per replica, the exporter uses at
-- most --max-connections (default 5), plus 1 with --ha for its lock, plus 1 while
-- `tw-exporter check` runs).
--
-- The script is idempotent: run it again after a schema change or to re-assert the grants. It
-- refuses to touch an existing role that is a superuser or can create roles/databases, bypass
-- row-level security or replicate: such a role is not "least privilege" and should not be
-- silently downgraded by a script.
--
-- PostgreSQL 14 and older grant CREATE on schema public to PUBLIC (every role). There, also run
--   REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- (the default since PostgreSQL 15) or the exporter's role can create tables in it.

\if :{?role}
\else
\set role tw_exporter
\endif
\if :{?schema}
\else
\set schema public
\endif
\if :{?password}
\else
\set password ''
\endif
\if :{?connection_limit}
\else
\set connection_limit 10
\endif

-- psql does not substitute variables inside dollar-quoted DO blocks, so hand them over as
-- session settings (SET prints no value; they are reset at the end).
SET tw_exporter.role = :'role';
SET tw_exporter.schema = :'schema';
SET tw_exporter.password = :'password';
SET tw_exporter.connection_limit = :'connection_limit';

DO $$
DECLARE
    role_name text := current_setting('tw_exporter.role');
    schema_name text := current_setting('tw_exporter.schema');
    new_password text := current_setting('tw_exporter.password');
    max_connections int := current_setting('tw_exporter.connection_limit')::int;
    existing pg_roles%ROWTYPE;
    tbl text;
BEGIN
    IF role_name !~ '^[a-z_][a-z0-9_$]*$' THEN
        RAISE EXCEPTION 'role name % must be a lower-case SQL identifier', quote_literal(role_name);
    END IF;

    SELECT * INTO existing FROM pg_roles WHERE rolname = role_name;
    IF NOT FOUND THEN
        EXECUTE format('CREATE ROLE %I LOGIN CONNECTION LIMIT %s', role_name, max_connections);
    ELSE
        IF existing.rolsuper OR existing.rolcreaterole OR existing.rolcreatedb
           OR existing.rolbypassrls OR existing.rolreplication THEN
            RAISE EXCEPTION 'role % already exists with elevated attributes (superuser, createrole, createdb, bypassrls or replication); refusing to use it',
                role_name;
        END IF;
        EXECUTE format('ALTER ROLE %I LOGIN CONNECTION LIMIT %s', role_name, max_connections);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
               WHERE r.rolname = role_name) THEN
        RAISE WARNING 'role % is a member of other roles and may inherit their privileges',
                role_name;
    END IF;
    IF new_password <> '' THEN
        EXECUTE format('ALTER ROLE %I PASSWORD %L', role_name, new_password);
    END IF;

    -- Backstops for every session of the role (a client may still override them per session;
    -- the grants below are what actually prevents writes).
    EXECUTE format('ALTER ROLE %I SET default_transaction_read_only = on', role_name);
    EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', role_name, '10s');
    EXECUTE format('ALTER ROLE %I SET idle_in_transaction_session_timeout = %L', role_name, '60s');

    -- Database: connect only (no CREATE, no TEMPORARY granted to the role itself).
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM %I', current_database(), role_name);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role_name);

    -- Schema: look up names, never create.
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', schema_name, role_name);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', schema_name, role_name);

    -- Tables: start from nothing (re-running removes anything granted since), then SELECT on
    -- exactly the four tables.
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', schema_name, role_name);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I', schema_name, role_name);
    FOREACH tbl IN ARRAY ARRAY['tw_users', 'tw_tweets', 'tw_hashtags', 'tw_tweet_hashtags'] LOOP
        IF to_regclass(format('%I.%I', schema_name, tbl)) IS NULL THEN
            RAISE EXCEPTION 'table %.% does not exist: create the schema first', schema_name, tbl;
        END IF;
        EXECUTE format('GRANT SELECT ON TABLE %I.%I TO %I', schema_name, tbl, role_name);
    END LOOP;
END
$$;

RESET tw_exporter.role;
RESET tw_exporter.schema;
RESET tw_exporter.password;
RESET tw_exporter.connection_limit;
