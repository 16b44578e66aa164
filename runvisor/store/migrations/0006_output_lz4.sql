-- Output chunks compressed with lz4 instead of pglz where the server was built with it
-- (PostgreSQL 14+, most packages): pglz costs PostgreSQL several times the CPU for a worse
-- ratio, and compressing every chunk is most of what storing output costs it. Rows already
-- stored keep their compression; both are read alike. A server without lz4 keeps pglz.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE run_output ALTER COLUMN data SET COMPRESSION lz4;
    END IF;
END
$$;
