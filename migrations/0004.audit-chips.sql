-- The person audit log (who changed which person, and how to undo a merge) and face
-- chips (a small picture of every face). See docs/ARCHITECTURE.md, "Corrections and
-- the audit log" and "Face chips".
-- depends: 0002.api-keys-jobs

-- One row per person operation. No foreign key to persons: the history of a deleted or
-- merged-away person must outlive it. `persons` lists every person the operation
-- touched, so one GIN lookup finds a person's whole history (a merge shows up in the
-- survivor's history and in the merged-away person's).
CREATE TABLE person_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action      text NOT NULL CHECK (action IN (
                    'create', 'rename', 'update', 'merge', 'unmerge', 'split',
                    'move', 'assign', 'unassign', 'remove', 'delete')),
    person_id   bigint,
    external_id text,
    persons     bigint[] NOT NULL DEFAULT '{}',
    actor       text NOT NULL CHECK (actor <> ''),
    details     jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(details) = 'object'),
    undone_by   bigint REFERENCES person_audit (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX person_audit_persons ON person_audit USING gin (persons);
CREATE INDEX person_audit_external_id ON person_audit (external_id);

-- A square JPEG around each face (twice the detector's box) and its 5 landmarks in the
-- chip's pixels: enough to show the face and to re-align it for another model without
-- the original photo. `region` is the chip's square in the original photo's upright
-- pixels (x, y, side), so chip and photo coordinates convert both ways.
CREATE TABLE face_chips (
    face_id     bigint PRIMARY KEY REFERENCES faces (id) ON DELETE CASCADE,
    size        smallint NOT NULL CHECK (size BETWEEN 16 AND 1024),
    landmarks   real[] NOT NULL CHECK (cardinality(landmarks) = 10),
    region      real[] NOT NULL CHECK (cardinality(region) = 3),
    jpeg        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- JPEG does not compress further: skip TOAST's compression attempt on every write.
ALTER TABLE face_chips ALTER COLUMN jpeg SET STORAGE EXTERNAL;
