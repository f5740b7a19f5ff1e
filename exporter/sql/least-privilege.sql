-- tw-exporter: a least-privilege PostgreSQL role for the exporter.
--
-- What the role may do: connect to THIS database, use the schema, and SELECT from the four
-- tables the exporter reads (tw_users, tw_tweets, tw_hashtags, tw_tweet_hashtags). Nothing
-- else: no INSERT/UPDATE/DELETE/TRUNCATE, no CREATE in the schema, no other table, and none of
-- the functions through which a role without any table privilege can still write (see
-- "Writing without table privileges" below). As a
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
-- Writing without table privileges. PostgreSQL lets every role (PUBLIC) execute functions that
-- store data however few privileges the role has: large objects (lo_create, lo_creat,
-- lo_from_bytea, lo_put, lowrite, lo_truncate, lo_unlink; PostgreSQL 15 even allows them in a
-- read-only transaction), notifications (pg_notify) and logical decoding messages written to
-- the WAL (pg_logical_emit_message). A privilege granted to PUBLIC cannot be taken from one
-- role, so the script revokes EXECUTE on these from PUBLIC in THIS database and grants it back
-- to the other roles that use this database now (its owner, and roles owning or granted a table,
-- view or sequence in it; superusers need no grant): applications keep working; a role that
-- needs large objects or pg_notify and is not one of those needs
--   GRANT EXECUTE ON FUNCTION lo_create(oid), ... TO that_role;
-- (the script's NOTICE lists the functions). The same for the functions of the dblink
-- extension, if installed (a second connection that commits on its own), and the role loses
-- USAGE on every foreign server (postgres_fdw writes through its own connection too). The
-- exporter itself never commits anything (every run ends in ROLLBACK), which also undoes
-- these where the script was not applied; the NOTIFY command cannot be revoked, and sends
-- nothing from a transaction that rolls back.
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
    fn regprocedure;
    other name;
    server name;
    -- Marks the roles this script made least-privilege: they get nothing back below.
    marker text := 'tw-exporter least-privilege role (least-privilege.sql)';
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

    EXECUTE format('COMMENT ON ROLE %I IS %L', role_name, marker);

    -- Functions that write without any table privilege (see "Writing without table
    -- privileges" above), and those of the dblink extension if it is installed.
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE (p.pronamespace = 'pg_catalog'::regnamespace
               AND p.proname IN ('lo_create', 'lo_creat', 'lo_from_bytea', 'lo_import', 'lo_put',
                                 'lowrite', 'lo_truncate', 'lo_truncate64', 'lo_unlink',
                                 'pg_notify', 'pg_logical_emit_message'))
           OR p.oid IN (SELECT d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                        WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
                          AND e.extname = 'dblink')
        ORDER BY 1
    LOOP
        IF has_function_privilege(role_name, fn, 'EXECUTE')
           AND EXISTS (SELECT 1 FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                       WHERE p.oid = fn AND a.grantee = 0 AND a.privilege_type = 'EXECUTE') THEN
            -- Granted to PUBLIC: revoke there, give back to the roles that use this database
            -- (own it, own a relation in it or hold a privilege on one).
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
            FOR other IN
                SELECT r.rolname FROM pg_roles r
                WHERE r.rolname <> role_name AND r.rolname !~ '^pg_' AND NOT r.rolsuper
                  AND coalesce(shobj_description(r.oid, 'pg_authid'), '') <> marker
                  AND (r.oid = (SELECT datdba FROM pg_database WHERE datname = current_database())
                       OR EXISTS (SELECT 1 FROM pg_class c WHERE c.relowner = r.oid
                                  AND c.relnamespace NOT IN ('pg_catalog'::regnamespace,
                                                             'information_schema'::regnamespace))
                       OR EXISTS (SELECT 1 FROM pg_class c, aclexplode(c.relacl) a
                                  WHERE a.grantee = r.oid))
            LOOP
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', fn, other);
            END LOOP;
            RAISE NOTICE 'revoked EXECUTE on % from PUBLIC (granted back to the roles using this database)', fn;
        END IF;
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM %I', fn, role_name);
        IF has_function_privilege(role_name, fn, 'EXECUTE') THEN
            RAISE WARNING 'role % can still execute % (through a role it is a member of)', role_name, fn;
        END IF;
    END LOOP;

    -- Foreign servers: a foreign table's writes go through a connection of their own.
    FOR server IN SELECT srvname FROM pg_foreign_server LOOP
        EXECUTE format('REVOKE ALL ON FOREIGN SERVER %I FROM %I', server, role_name);
    END LOOP;
END
$$;

RESET tw_exporter.role;
RESET tw_exporter.schema;
RESET tw_exporter.password;
RESET tw_exporter.connection_limit;
