-- Initial schema: models, persons (+ aliases), images, faces and the change log the
-- FAISS mirror replays. See docs/ARCHITECTURE.md, "Store contract".
-- depends:

CREATE EXTENSION IF NOT EXISTS vector;

-- One row per embedding model. The dimension is fixed on first use, so the faces
-- of one model can always be indexed together.
CREATE TABLE models (
    name        text PRIMARY KEY CHECK (name <> ''),
    dim         integer NOT NULL CHECK (dim BETWEEN 1 AND 16000),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE persons (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id  text NOT NULL UNIQUE CHECK (external_id <> ''),
    display_name text,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- External ids retired by a merge (or a change of external id) keep resolving.
CREATE TABLE person_aliases (
    alias       text PRIMARY KEY CHECK (alias <> ''),
    person_id   bigint NOT NULL REFERENCES persons (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX person_aliases_person_id ON person_aliases (person_id);

CREATE TABLE images (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sha256      bytea NOT NULL UNIQUE CHECK (octet_length(sha256) = 32),
    source      text,
    width       integer NOT NULL CHECK (width >= 0),
    height      integer NOT NULL CHECK (height >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The embedding column has no declared dimension because several models share the
-- table; the per-model dimension is enforced by the faces triggers below.
CREATE TABLE faces (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image_id      bigint NOT NULL REFERENCES images (id),
    person_id     bigint REFERENCES persons (id),
    face_index    smallint NOT NULL CHECK (face_index >= 0),
    box           real[] NOT NULL CHECK (cardinality(box) = 4),
    landmarks     real[] NOT NULL CHECK (cardinality(landmarks) = 10),
    det_prob      real NOT NULL,
    quality       real NOT NULL,
    model         text NOT NULL REFERENCES models (name),
    model_version text NOT NULL,
    embedding     vector NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (image_id, model, face_index)
);
CREATE INDEX faces_person_id ON faces (person_id);
CREATE INDEX faces_model_id ON faces (model, id);

CREATE TABLE change_log (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    op          text NOT NULL CHECK (op IN ('insert', 'delete', 'update')),
    face_id     bigint NOT NULL,
    person_id   bigint,
    model       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX change_log_model_seq ON change_log (model, seq);

-- Every writer of the change log holds this lock until it commits, so change_log.seq
-- is allocated in commit order: a follower that has read everything up to seq N can
-- never later see a smaller seq commit. The key is an arbitrary constant ('iden').
CREATE FUNCTION identity_lock_changes() RETURNS void
LANGUAGE sql AS $$ SELECT pg_advisory_xact_lock(1768187246) $$;

CREATE FUNCTION faces_log_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
    bad record;
BEGIN
    -- Refuses embeddings whose dimension differs from their model's. Set-based, so a
    -- COPY of a million rows pays for one query, not a million trigger calls.
    -- (Transition tables are visible only here, hence the check is repeated per trigger.)
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
        SELECT 'insert', id, person_id, model FROM new_faces ORDER BY id
        RETURNING seq
    )
    SELECT max(seq) INTO last_seq FROM logged;
    IF last_seq IS NOT NULL THEN
        PERFORM pg_notify('identity_changes', last_seq::text);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION faces_log_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
BEGIN
    PERFORM identity_lock_changes();
    WITH logged AS (
        INSERT INTO change_log (op, face_id, person_id, model)
        SELECT 'delete', id, person_id, model FROM old_faces ORDER BY id
        RETURNING seq
    )
    SELECT max(seq) INTO last_seq FROM logged;
    IF last_seq IS NOT NULL THEN
        PERFORM pg_notify('identity_changes', last_seq::text);
    END IF;
    RETURN NULL;
END $$;

-- A face changing person (merge) or embedding (re-embedding) is an 'update': the
-- follower re-fetches the row. Moving a face to another model or image is refused,
-- because an index never mixes models: delete and insert instead.
CREATE FUNCTION faces_log_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
    bad record;
BEGIN
    IF EXISTS (SELECT 1 FROM new_faces n JOIN old_faces o USING (id)
               WHERE n.model <> o.model OR n.image_id <> o.image_id) THEN
        RAISE EXCEPTION 'a face cannot change model or image; delete it and insert a new one'
            USING ERRCODE = 'check_violation';
    END IF;
    -- Refuses embeddings whose dimension differs from their model's. Set-based, so a
    -- COPY of a million rows pays for one query, not a million trigger calls.
    -- (Transition tables are visible only here, hence the check is repeated per trigger.)
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
        SELECT 'update', n.id, n.person_id, n.model
        FROM new_faces n JOIN old_faces o USING (id)
        WHERE n.person_id IS DISTINCT FROM o.person_id
           OR n.embedding IS DISTINCT FROM o.embedding
        ORDER BY n.id
        RETURNING seq
    )
    SELECT max(seq) INTO last_seq FROM logged;
    IF last_seq IS NOT NULL THEN
        PERFORM pg_notify('identity_changes', last_seq::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER faces_log_insert AFTER INSERT ON faces
    REFERENCING NEW TABLE AS new_faces
    FOR EACH STATEMENT EXECUTE FUNCTION faces_log_insert();
CREATE TRIGGER faces_log_delete AFTER DELETE ON faces
    REFERENCING OLD TABLE AS old_faces
    FOR EACH STATEMENT EXECUTE FUNCTION faces_log_delete();
CREATE TRIGGER faces_log_update AFTER UPDATE ON faces
    REFERENCING OLD TABLE AS old_faces NEW TABLE AS new_faces
    FOR EACH STATEMENT EXECUTE FUNCTION faces_log_update();

CREATE FUNCTION persons_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER persons_touch BEFORE UPDATE ON persons
    FOR EACH ROW EXECUTE FUNCTION persons_touch();
