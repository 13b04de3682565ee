-- 0060 subscriptions this service asks of upstream services: ws-gateway forwards Bybit's position
-- topic only while a subscription exists, and the position consumer requests it at start and then
-- periodically (consumers/ws_gateway.py). Each attempt's outcome is kept here, so that /health (a
-- process of its own) can show whether the stream is switched on.
-- Plain SQL, safe to run twice; no BEGIN/COMMIT (bin/migrate runs the whole upgrade in one
-- transaction). No function bodies here (docs/migrations.md).

CREATE TABLE IF NOT EXISTS pm.upstream_subscriptions (
    provider text NOT NULL,
    channel text NOT NULL,
    subscribed boolean NOT NULL,
    last_status text,
    failures integer NOT NULL DEFAULT 0,
    last_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_success_at timestamptz,
    CONSTRAINT upstream_subscriptions_pkey PRIMARY KEY (provider, channel),
    CONSTRAINT upstream_subscriptions_failures_check CHECK (failures >= 0)
);
COMMENT ON TABLE pm.upstream_subscriptions IS
    'Subscriptions this service requests from upstream services (ws-gateway, channel position): the outcome of the latest attempt (subscribed, last_status), consecutive failures, when it was last tried and last succeeded. Written by pm.record_subscription, shown by /health';
