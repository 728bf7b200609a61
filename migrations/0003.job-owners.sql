-- Jobs that outlive their process (issue 3): who runs a job, when it last said so, and
-- the work it was given, so the next API start can resume it. See docs/ARCHITECTURE.md,
-- "Jobs: owners, heartbeats and resumption".
-- depends: 0002.api-keys-jobs

-- 'cancelled': a client asked for it (DELETE /v1/jobs/{id}) or gave up on the job (an
-- `identity enroll` that found no live worker). Workers refuse to write for a job that
-- is no longer queued or running, inside the transaction that would write.
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'));

-- owner: the process that drives the job ("host:pid:node:token"), NULL when the broker
-- holds the work (Celery redelivers a dead worker's batch by itself). heartbeat_at: the
-- owner's last sign of life. resumes: how often a new owner took the job over, so a job
-- that kills its process every time ends as failed instead of looping.
ALTER TABLE jobs
    ADD COLUMN owner        text,
    ADD COLUMN heartbeat_at timestamptz,
    ADD COLUMN resumes      integer NOT NULL DEFAULT 0 CHECK (resumes >= 0),
    -- progress of work that is not counted in per-item outcomes (clustering)
    ADD COLUMN items_done   integer CHECK (items_done >= 0);

CREATE INDEX jobs_active ON jobs (owner) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_status_kind ON jobs (status, kind, created_at);

-- The batches a job was cut into, written with the job in one transaction: a resumed
-- job runs the plan's batches that have no row in job_batches yet.
CREATE TABLE job_plan (
    job_id   uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    batch_no integer NOT NULL CHECK (batch_no >= 0),
    items    jsonb NOT NULL CHECK (jsonb_typeof(items) = 'array'),
    PRIMARY KEY (job_id, batch_no)
);
