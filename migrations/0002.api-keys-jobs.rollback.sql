DROP TABLE IF EXISTS job_batches, jobs, api_keys;
