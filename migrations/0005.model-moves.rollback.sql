-- Restore 0001's faces_log_update (it no longer knows face_embeddings).
CREATE OR REPLACE FUNCTION faces_log_update() RETURNS trigger
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
DROP VIEW IF EXISTS face_vectors;
DROP TABLE IF EXISTS model_moves, face_embeddings;
DROP FUNCTION IF EXISTS face_embeddings_log_insert(), face_embeddings_log_delete(),
    face_embeddings_log_update();
DELETE FROM jobs WHERE kind = 'model_move';
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('enroll', 'cluster'));
