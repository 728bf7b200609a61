-- Moving a live store from one embedding model to another (issue 14): a second model's
-- vectors beside the first's, and the record of each move. See docs/ARCHITECTURE.md,
-- "Moving to another model".
-- depends: 0003.job-owners 0004.audit-chips

-- The vectors of a face under a model other than the face's own (`faces.model`). Face
-- ids never change: a move adds rows here, and finalizing a move promotes them into
-- `faces` (model, version and embedding updated in place) and deletes them here.
CREATE TABLE face_embeddings (
    face_id       bigint NOT NULL REFERENCES faces (id) ON DELETE CASCADE,
    model         text NOT NULL REFERENCES models (name),
    model_version text NOT NULL,
    embedding     vector NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, face_id)
);
CREATE INDEX face_embeddings_face_id ON face_embeddings (face_id);

-- Every vector of every model, one row per (face, model): what the search index of a
-- model, its SQL fallback and export read (`WHERE model = ...`, pushed into both arms).
-- A face never has two rows for one model: a face's own model never has a row in
-- face_embeddings (the insert trigger below refuses it).
CREATE VIEW face_vectors AS
    SELECT id AS face_id, person_id, model, model_version, embedding FROM faces
    UNION ALL
    SELECT e.face_id, f.person_id, e.model, e.model_version, e.embedding
    FROM face_embeddings e JOIN faces f ON f.id = e.face_id;

-- One row per move. state: 'running' (re-embedding; search answers with `source`),
-- 'switched' (every face has a `target` vector and search answers with `target`; the
-- source vectors are kept), 'finalized' (the target vectors promoted into `faces`, the
-- source vectors gone; writing faces of `source` is refused from then on), 'abandoned'
-- (given up while running: the target vectors were deleted). At most one move is open
-- (running or switched) at a time.
CREATE TABLE model_moves (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source         text NOT NULL REFERENCES models (name),
    target         text NOT NULL REFERENCES models (name),
    target_version text NOT NULL,
    state          text NOT NULL DEFAULT 'running'
                   CHECK (state IN ('running', 'switched', 'finalized', 'abandoned')),
    faces_total    integer NOT NULL DEFAULT 0 CHECK (faces_total >= 0),
    from_chips     integer NOT NULL DEFAULT 0 CHECK (from_chips >= 0),
    from_photos    integer NOT NULL DEFAULT 0 CHECK (from_photos >= 0),
    failed         integer NOT NULL DEFAULT 0 CHECK (failed >= 0),
    runs           integer NOT NULL DEFAULT 0 CHECK (runs >= 0),
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    switched_at    timestamptz,
    finalized_at   timestamptz,
    CHECK (source <> target)
);
CREATE UNIQUE INDEX model_moves_one_open ON model_moves ((true)) WHERE state IN ('running', 'switched');
CREATE INDEX model_moves_source ON model_moves (source, state);

-- A move started through the API (POST /v1/jobs/model-move) is a job of its own kind.
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('enroll', 'cluster', 'model_move'));

-- The change log of face_embeddings, so a mirror can follow the target model as it
-- follows a face's own model. Same lock and NOTIFY as the faces triggers (0001).
CREATE FUNCTION face_embeddings_log_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
    bad record;
BEGIN
    SELECT n.model, vector_dims(n.embedding) AS got, m.dim AS want INTO bad
    FROM new_rows n JOIN models m ON m.name = n.model
    WHERE vector_dims(n.embedding) <> m.dim
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'embedding dimension % does not match model % (dimension %)',
            bad.got, bad.model, bad.want
            USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM new_rows n JOIN faces f ON f.id = n.face_id AND f.model = n.model) THEN
        RAISE EXCEPTION 'a face already has a vector of its own model in faces'
            USING ERRCODE = 'check_violation';
    END IF;
    PERFORM identity_lock_changes();
    WITH logged AS (
        INSERT INTO change_log (op, face_id, person_id, model)
        SELECT 'insert', n.face_id, f.person_id, n.model
        FROM new_rows n JOIN faces f ON f.id = n.face_id ORDER BY n.face_id
        RETURNING seq
    )
    SELECT max(seq) INTO last_seq FROM logged;
    IF last_seq IS NOT NULL THEN
        PERFORM pg_notify('identity_changes', last_seq::text);
    END IF;
    RETURN NULL;
END $$;

-- A deleted row is logged unless its face now holds that model itself (finalizing a
-- move promotes the vector into `faces` in the same transaction: nothing left the model).
CREATE FUNCTION face_embeddings_log_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
BEGIN
    PERFORM identity_lock_changes();
    WITH logged AS (
        INSERT INTO change_log (op, face_id, person_id, model)
        SELECT 'delete', o.face_id, NULL, o.model FROM old_rows o
        WHERE NOT EXISTS (SELECT 1 FROM faces f WHERE f.id = o.face_id AND f.model = o.model)
        ORDER BY o.face_id
        RETURNING seq
    )
    SELECT max(seq) INTO last_seq FROM logged;
    IF last_seq IS NOT NULL THEN
        PERFORM pg_notify('identity_changes', last_seq::text);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION face_embeddings_log_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n JOIN old_rows o ON o.face_id = n.face_id AND o.model = n.model
               JOIN models m ON m.name = n.model WHERE vector_dims(n.embedding) <> m.dim) THEN
        RAISE EXCEPTION 'embedding dimension does not match its model' USING ERRCODE = 'check_violation';
    END IF;
    PERFORM identity_lock_changes();
    WITH logged AS (
        INSERT INTO change_log (op, face_id, person_id, model)
        SELECT 'update', n.face_id, f.person_id, n.model
        FROM new_rows n JOIN faces f ON f.id = n.face_id ORDER BY n.face_id
        RETURNING seq
    )
    SELECT max(seq) INTO last_seq FROM logged;
    IF last_seq IS NOT NULL THEN
        PERFORM pg_notify('identity_changes', last_seq::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER face_embeddings_log_insert AFTER INSERT ON face_embeddings
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION face_embeddings_log_insert();
CREATE TRIGGER face_embeddings_log_delete AFTER DELETE ON face_embeddings
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION face_embeddings_log_delete();
CREATE TRIGGER face_embeddings_log_update AFTER UPDATE ON face_embeddings
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION face_embeddings_log_update();

-- faces' update trigger, extended: (1) a face changing person is also an 'update' for
-- every other model it has a vector of, so those models' mirrors see the new person;
-- (2) a face may change model only to a model it already has a vector of in
-- face_embeddings (finalizing a move); that is a 'delete' for the model it leaves.
CREATE OR REPLACE FUNCTION faces_log_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
    bad record;
BEGIN
    IF EXISTS (SELECT 1 FROM new_faces n JOIN old_faces o USING (id)
               WHERE n.image_id <> o.image_id
                  OR (n.model <> o.model AND NOT EXISTS (
                        SELECT 1 FROM face_embeddings e WHERE e.face_id = n.id AND e.model = n.model))) THEN
        RAISE EXCEPTION 'a face cannot change model or image; delete it and insert a new one'
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT n.model, vector_dims(n.embedding) AS got, m.dim AS want INTO bad
    FROM new_faces n JOIN models m ON m.name = n.model
    WHERE vector_dims(n.embedding) <> m.dim
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'embedding dimension % does not match model % (dimension %)',
            bad.got, bad.model, bad.want
            USING ERRCODE = 'check_violation';
    END IF;
    PERFORM identity_lock_changes();
    WITH logged AS (
        INSERT INTO change_log (op, face_id, person_id, model)
        SELECT op, face_id, person_id, model FROM (
            SELECT 'update' AS op, n.id AS face_id, n.person_id, n.model
            FROM new_faces n JOIN old_faces o USING (id)
            WHERE n.person_id IS DISTINCT FROM o.person_id
               OR n.embedding IS DISTINCT FROM o.embedding
               OR n.model <> o.model
            UNION ALL
            SELECT 'delete', o.id, o.person_id, o.model
            FROM new_faces n JOIN old_faces o USING (id)
            WHERE n.model <> o.model
            UNION ALL
            SELECT 'update', n.id, n.person_id, e.model
            FROM new_faces n JOIN old_faces o USING (id)
            JOIN face_embeddings e ON e.face_id = n.id AND e.model <> n.model
            WHERE n.person_id IS DISTINCT FROM o.person_id
        ) AS changes
        ORDER BY face_id, op
        RETURNING seq
    )
    SELECT max(seq) INTO last_seq FROM logged;
    IF last_seq IS NOT NULL THEN
        PERFORM pg_notify('identity_changes', last_seq::text);
    END IF;
    RETURN NULL;
END $$;
