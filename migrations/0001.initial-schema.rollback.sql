DROP TABLE IF EXISTS change_log, faces, images, person_aliases, persons, models;
DROP FUNCTION IF EXISTS faces_log_insert(), faces_log_delete(), faces_log_update(),
    identity_lock_changes(), persons_touch();
