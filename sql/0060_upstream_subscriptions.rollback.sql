-- Rollback of 0060_upstream_subscriptions: the record of upstream subscriptions (ws-gateway keeps
-- its own; nothing is unsubscribed).
DROP TABLE IF EXISTS pm.upstream_subscriptions;
