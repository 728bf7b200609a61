-- The extension stays: it may have been there before, and other objects may use it.
DROP INDEX IF EXISTS persons_display_name_trgm;
DROP INDEX IF EXISTS persons_external_id_trgm;
