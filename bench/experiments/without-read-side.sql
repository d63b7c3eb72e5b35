-- An experiment for bench-jobs-pipeline (BENCH_SQL_FILE): the control plane
-- without what the backups list reads at a million rows, to see what our
-- pipeline would do without it. Not a configuration to run: the lists and
-- `stats=true` are then wrong (no summary) and slow (no indexes).
DROP TRIGGER backups_stats_insert ON backups;
DROP TRIGGER backups_stats_update ON backups;
DROP INDEX backups_created_idx, backups_project_created_idx, backups_status_created_idx,
    backups_project_status_created_idx, backups_destination_created_idx;
DROP INDEX jobs_kind_status_idx, jobs_idempotency_idx;
