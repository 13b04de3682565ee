-- Rollback of 0066_heartbeats: the processes' heartbeats and figures.
DROP TABLE IF EXISTS pm.heartbeats;
