-- 0044 price pushes (issue 7): POST /api/v1/prices goes through pm.push_prices, which adds to the
-- core's pm.set_prices the one check it lacks: a price that rounds to 0 at the 8 decimals of the
-- shared tables (e.g. "0.000000001") is rejected instead of being stored as 0.
-- Plain SQL, safe to run twice (CREATE OR REPLACE); no BEGIN/COMMIT.

-- pm.push_prices(prices, trace, actor)
CREATE OR REPLACE FUNCTION pm.push_prices(p_prices jsonb, p_trace text DEFAULT NULL, p_actor text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    k text;
BEGIN
    IF jsonb_typeof(p_prices) = 'object' THEN
        FOR k IN SELECT jsonb_object_keys(p_prices) LOOP
            IF round(pm.positive(pm.j_num(p_prices, k, k), k), 8) = 0 THEN
                PERFORM pm.bad_input(k, format('%s is below the smallest price 0.00000001', p_prices ->> k));
            END IF;
        END LOOP;
    END IF;
    RETURN pm.set_prices(p_prices, 'manual', p_trace, p_actor);
END
$$;
COMMENT ON FUNCTION pm.push_prices(jsonb, text, text) IS
    'pm.push_prices({"SYMBOL": "price"}, trace, actor) -> pm.set_prices(prices, ''manual'', trace, actor): the same result and effects, after rejecting (22023 naming the symbol, nothing written) a price that rounds to 0 at 8 decimals, which set_prices would store as 0. Locks as pm.set_prices.';
