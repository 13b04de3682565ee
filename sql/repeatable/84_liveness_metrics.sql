-- Liveness and metrics: the heartbeats of the long-running processes (the order and position
-- consumers, the outbox relay) with their cumulative figures, which roles are alive (GET /health),
-- and the service-wide figures of GET /metrics. A process's figures are {"counters": {name: n},
-- "gauges": {name: x}}: counters (histogram buckets, sums and counts included) add up over a role's
-- instances, gauges are the largest of its live instances.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.

-- pm.heartbeat_timeout() -> interval
-- How long a process may stay silent and still count as alive (setting pm.heartbeat_timeout, seconds, default 30).
CREATE OR REPLACE FUNCTION pm.heartbeat_timeout() RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT make_interval(secs => pm.setting('heartbeat_timeout', '30')::double precision)
$$;
COMMENT ON FUNCTION pm.heartbeat_timeout() IS
    'pm.heartbeat_timeout() -> interval: the custom setting pm.heartbeat_timeout in seconds (POSITION_MANAGER_HEARTBEAT_TIMEOUT; default 30). A role whose newest heartbeat is older is not alive.';

-- pm.heartbeat(role, instance, started at, figures) -> void
-- One beat of a process: its row written; the role's instances silent for a day folded into its row with instance ''.
CREATE OR REPLACE FUNCTION pm.heartbeat(p_role text, p_instance text, p_started_at timestamptz, p_figures jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    IF p_role IS NULL OR p_role !~ '^[a-z][a-z0-9_-]{0,31}$' THEN
        PERFORM pm.bad_input('role', format('expected a role name like order, got %s', coalesce(left(p_role, 40), 'nothing')));
    END IF;
    IF p_instance IS NULL OR p_instance = '' OR length(p_instance) > 200 THEN
        PERFORM pm.bad_input('instance', 'expected a non-empty name of at most 200 characters');
    END IF;
    IF jsonb_typeof(p_figures) IS DISTINCT FROM 'object'
       OR coalesce(jsonb_typeof(p_figures -> 'counters'), 'object') <> 'object'
       OR coalesce(jsonb_typeof(p_figures -> 'gauges'), 'object') <> 'object' THEN
        PERFORM pm.bad_input('figures', 'expected {"counters": {name: number}, "gauges": {name: number}}');
    END IF;
    INSERT INTO pm.heartbeats AS h (role, instance, started_at, beat_at, figures)
    VALUES (p_role, p_instance, coalesce(p_started_at, now()), now(), p_figures)
    ON CONFLICT ON CONSTRAINT heartbeats_pkey DO UPDATE
       SET started_at = excluded.started_at, beat_at = excluded.beat_at, figures = excluded.figures;

    -- instances silent for a day (restarted, moved, scaled down): their counters go to the role's
    -- row '' so that a role's totals never go back (Prometheus counters), and the table stays small
    SELECT count(*) INTO n FROM pm.heartbeats h
     WHERE h.role = p_role AND h.instance <> '' AND h.beat_at < now() - interval '1 day';
    IF n > 0 THEN
        WITH gone AS (
            DELETE FROM pm.heartbeats h
             WHERE h.role = p_role AND (h.instance = '' OR h.beat_at < now() - interval '1 day')
            RETURNING h.figures
        )
        INSERT INTO pm.heartbeats (role, instance, started_at, beat_at, figures)
        SELECT p_role, '', now(), now(),
               jsonb_build_object('counters', coalesce(jsonb_object_agg(c.key, c.total), '{}'::jsonb))
          FROM (SELECT e.key, sum(e.value::numeric) AS total
                  FROM gone g, jsonb_each_text(coalesce(g.figures -> 'counters', '{}'::jsonb)) e
                 GROUP BY e.key) c;
    END IF;
END
$$;
COMMENT ON FUNCTION pm.heartbeat(text, text, timestamptz, jsonb) IS
    'pm.heartbeat(role, instance, started at, figures {"counters": {name: number}, "gauges": {name: number}}): upserts the process''s row of pm.heartbeats with beat_at = now(). Instances of the role silent for more than a day are folded into the role''s row with instance '''' (counters summed, gauges dropped). Raises 22023 for a bad role name, instance or figures shape. Each process writes only its own row: no contention.';

-- pm.role_figures(role) -> jsonb
-- A role's figures: counters summed over all its rows (folded ones too), gauges the largest of its live instances.
CREATE OR REPLACE FUNCTION pm.role_figures(p_role text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'counters', coalesce((SELECT jsonb_object_agg(x.key, x.total)
                                FROM (SELECT e.key, sum(e.value::numeric) AS total
                                        FROM pm.heartbeats h, jsonb_each_text(h.figures -> 'counters') e
                                       WHERE h.role = p_role
                                       GROUP BY e.key) x), '{}'::jsonb),
        'gauges', coalesce((SELECT jsonb_object_agg(x.key, x.top)
                              FROM (SELECT e.key, max(e.value::numeric) AS top
                                      FROM pm.heartbeats h, jsonb_each_text(h.figures -> 'gauges') e
                                     WHERE h.role = p_role AND h.instance <> '' AND h.beat_at > now() - pm.heartbeat_timeout()
                                     GROUP BY e.key) x), '{}'::jsonb))
$$;
COMMENT ON FUNCTION pm.role_figures(text) IS
    'pm.role_figures(role) -> {"counters": {name: sum over every row of the role, folded instances included}, "gauges": {name: largest value among the live instances}}. Read only.';

-- pm.liveness(roles) -> jsonb
-- Per role: alive (a heartbeat within the timeout), seconds since its newest heartbeat, live instances.
CREATE OR REPLACE FUNCTION pm.liveness(p_roles text[]) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_object_agg(r.role, jsonb_build_object(
               'alive', coalesce(b.newest > now() - pm.heartbeat_timeout(), false),
               'seconds_since_heartbeat', round(extract(epoch FROM now() - b.newest)::numeric, 3),
               'instances', b.live)), '{}'::jsonb)
      FROM (SELECT DISTINCT unnest(p_roles) AS role) r
      CROSS JOIN LATERAL (SELECT max(h.beat_at) AS newest,
                                 count(*) FILTER (WHERE h.beat_at > now() - pm.heartbeat_timeout()) AS live
                            FROM pm.heartbeats h
                           WHERE h.role = r.role AND h.instance <> '') b
$$;
COMMENT ON FUNCTION pm.liveness(text[]) IS
    'pm.liveness(roles) -> {role: {"alive": a heartbeat within pm.heartbeat_timeout(), "seconds_since_heartbeat": since the newest one (null when the role never beat), "instances": live instances}} for each given role. Read only.';

-- pm.metrics(roles) -> jsonb
-- The service-wide figures of GET /metrics: pm.health()'s, and per role its liveness and figures.
CREATE OR REPLACE FUNCTION pm.metrics(p_roles text[]) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT (pm.health() - 'schema')
           || jsonb_build_object('consumers', coalesce(
                  (SELECT jsonb_object_agg(r.role, (pm.liveness(ARRAY[r.role]) -> r.role) || pm.role_figures(r.role))
                     FROM (SELECT unnest(p_roles) AS role UNION SELECT h.role FROM pm.heartbeats h) r),
                  '{}'::jsonb))
$$;
COMMENT ON FUNCTION pm.metrics(text[]) IS
    'pm.metrics(expected roles) -> pm.health() without schema, plus "consumers": {role: {alive, seconds_since_heartbeat, instances, counters, gauges}} for the expected roles and every role that ever beat (pm.liveness, pm.role_figures). Read only.';
