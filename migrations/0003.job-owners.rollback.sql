DROP TABLE IF EXISTS job_plan;
DROP INDEX IF EXISTS jobs_status_kind;
DROP INDEX IF EXISTS jobs_active;
ALTER TABLE jobs DROP COLUMN IF EXISTS owner, DROP COLUMN IF EXISTS heartbeat_at,
    DROP COLUMN IF EXISTS resumes, DROP COLUMN IF EXISTS items_done;
UPDATE jobs SET status = 'failed', error = coalesce(error, 'cancelled') WHERE status = 'cancelled';
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed'));
