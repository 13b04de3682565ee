-- Rollback of 0011: the API list function.
DROP FUNCTION IF EXISTS pm.list_positions(text, text, numeric, numeric, text, integer, integer);
