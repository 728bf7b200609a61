-- Notifications for the API processes' in-memory caches (identity/store/readcache.py):
-- a revoked or changed API key, and a renamed, re-identified or deleted person, are
-- announced on commit, so every process drops its cached copy within milliseconds
-- (a time-to-live bounds it when a notification is lost). Triggers, not code, send
-- them: no write path can forget one. See docs/ARCHITECTURE.md, "Serving caches".
-- depends: 0002.api-keys-jobs

CREATE FUNCTION api_keys_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('identity_keys', OLD.key_id);
    RETURN NULL;
END;
$$;

-- last_used_at is written once a minute per key in use: not a reason to drop the cache.
CREATE TRIGGER api_keys_notify AFTER UPDATE OF key_id, name, secret_hash, scopes, revoked_at OR DELETE
    ON api_keys FOR EACH ROW EXECUTE FUNCTION api_keys_notify();

CREATE FUNCTION persons_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('identity_persons', OLD.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER persons_notify AFTER UPDATE OF external_id, display_name OR DELETE
    ON persons FOR EACH ROW EXECUTE FUNCTION persons_notify();
