-- Rollback of 0070_api_rate_state: the token-bucket state (the fixed-window table of 0010 is not
-- brought back; its rollback drops it if present).
DROP TABLE IF EXISTS pm.api_rate_state;
