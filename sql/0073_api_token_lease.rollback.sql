-- Rollback of 0073_api_token_lease: the bucket's column of leases. (The functions are part of the
-- code layer, which a rollback removes first.)
ALTER TABLE pm.api_rate_state DROP COLUMN IF EXISTS taken;
