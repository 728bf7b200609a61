DROP TABLE IF EXISTS face_chips, person_audit;
