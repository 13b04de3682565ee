-- 0066 heartbeats: each long-running process of the service (the order and position consumers,
-- the outbox relay) writes one row every few seconds with its cumulative figures (counters,
-- histogram buckets, gauges). /health reads liveness from it, /metrics and Grafana the figures:
-- the consumers run in processes (in production, containers) of their own, and the database is what
-- they share with the API.
-- Plain SQL, safe to run twice; no BEGIN/COMMIT. No function bodies here (docs/migrations.md).

CREATE TABLE IF NOT EXISTS pm.heartbeats (
    role text NOT NULL,
    instance text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    beat_at timestamptz NOT NULL DEFAULT now(),
    figures jsonb NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT heartbeats_pkey PRIMARY KEY (role, instance)
);
COMMENT ON TABLE pm.heartbeats IS
    'One row per running process of a role (order, position, relay; instance = host:pid): when it last beat and its cumulative figures {"counters": {name: n}, "gauges": {name: x}}. Instances silent for a day are folded into the role''s row with instance '''' (their counters kept, so totals never go back). Written by pm.heartbeat; read by pm.liveness, pm.metrics and pm.v_consumers.';
