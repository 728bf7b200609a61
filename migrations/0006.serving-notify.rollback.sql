DROP TRIGGER IF EXISTS persons_notify ON persons;
DROP TRIGGER IF EXISTS api_keys_notify ON api_keys;
DROP FUNCTION IF EXISTS persons_notify();
DROP FUNCTION IF EXISTS api_keys_notify();
