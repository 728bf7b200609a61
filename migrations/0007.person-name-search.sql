-- Person search by name without a sequential scan: trigram GIN indexes on external_id and
-- display_name, which the unchanged query of `Store.list_persons`
-- (`external_id ILIKE '%…%' ESCAPE '\' OR display_name ILIKE '%…%' ESCAPE '\'`) uses through
-- a BitmapOr (a substring pattern can use no B-tree). Same query, same results: `%`, `_`
-- and `\` in a search stay literal (the pattern is escaped before it reaches SQL).
-- pg_trgm ships with PostgreSQL (contrib) and is a trusted extension (PG 13+): a database
-- owner may create it. Where it is not installed on the server, or this role may not create
-- it, the migration still succeeds without the indexes (a NOTICE says so) and search keeps
-- working, by a sequential scan; once the extension can be created, the three statements
-- of the block below, run by hand, add the indexes.
-- See docs/ARCHITECTURE.md, "Store contract", and BENCHMARKS.md, "Store".
-- depends: 0006.serving-notify

DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE INDEX persons_external_id_trgm ON persons USING gin (external_id gin_trgm_ops);
    CREATE INDEX persons_display_name_trgm ON persons USING gin (display_name gin_trgm_ops);
EXCEPTION
    -- not installed (no control file: 58P01 before PG 16, 0A000 since), not allowed
    -- (42501), or installed in a schema outside the search path (42704: no gin_trgm_ops)
    WHEN undefined_file OR feature_not_supported OR insufficient_privilege OR undefined_object THEN
        RAISE NOTICE 'pg_trgm unavailable (%): person search by name stays unindexed', SQLERRM;
END
$$;
