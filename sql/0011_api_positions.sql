-- 0011 API reads: the filtered, paginated list of positions behind GET /api/v1/positions (SPEC §3).
-- Plain SQL, safe to run twice. Every figure comes from pm.v_positions / pm.position_json.

-- pm.list_positions(asset, mode, size_min, size_max, status, limit, offset)
-- Positions matching every given filter, ordered by (asset, mode), as Position JSON.
CREATE OR REPLACE FUNCTION pm.list_positions(p_asset text DEFAULT NULL, p_mode text DEFAULT NULL,
                                             p_size_min numeric DEFAULT NULL, p_size_max numeric DEFAULT NULL,
                                             p_status text DEFAULT 'all', p_limit integer DEFAULT NULL,
                                             p_offset integer DEFAULT 0)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    l_asset text := upper(nullif(btrim(p_asset), ''));
    l_status text := coalesce(p_status, 'all');
    l_positions jsonb;
    l_total integer;
BEGIN
    IF p_mode IS NOT NULL AND p_mode NOT IN ('one-way', 'hedge') THEN
        RAISE EXCEPTION 'invalid parameter mode: expected one-way or hedge, got %', p_mode USING ERRCODE = '22023';
    END IF;
    IF l_status NOT IN ('open', 'closed', 'all') THEN
        RAISE EXCEPTION 'invalid parameter status: expected open, closed or all, got %', p_status USING ERRCODE = '22023';
    END IF;
    IF p_size_min < 0 OR p_size_max < 0 THEN
        RAISE EXCEPTION 'invalid parameter size_min/size_max: must be >= 0' USING ERRCODE = '22023';
    END IF;
    IF p_limit < 0 THEN
        RAISE EXCEPTION 'invalid parameter limit: must be >= 0, got %', p_limit USING ERRCODE = '22023';
    END IF;
    IF p_offset < 0 THEN
        RAISE EXCEPTION 'invalid parameter offset: must be >= 0, got %', p_offset USING ERRCODE = '22023';
    END IF;

    SELECT coalesce(jsonb_agg(pm.position_json(s.v) ORDER BY (s.v).asset, (s.v).mode), '[]'::jsonb)
      INTO l_positions
      FROM (SELECT v
              FROM pm.v_positions v
             WHERE (l_asset IS NULL OR v.asset = l_asset)
               AND (p_mode IS NULL OR v.mode = p_mode)
               AND (p_size_min IS NULL OR abs(v.size) >= p_size_min)
               AND (p_size_max IS NULL OR abs(v.size) <= p_size_max)
               AND (l_status = 'all' OR v.is_open = (l_status = 'open'))
             ORDER BY v.asset, v.mode
             LIMIT p_limit OFFSET coalesce(p_offset, 0)) s;

    SELECT count(*) INTO l_total
      FROM public.positions p
     WHERE (l_asset IS NULL OR p.asset = l_asset)
       AND (p_mode IS NULL OR p.mode = p_mode)
       AND (p_size_min IS NULL OR abs(p.size) >= p_size_min)
       AND (p_size_max IS NULL OR abs(p.size) <= p_size_max)
       AND (l_status = 'all'
            OR (p.size <> 0 OR coalesce(p.long_size, 0) <> 0 OR coalesce(p.short_size, 0) <> 0) = (l_status = 'open'));

    RETURN jsonb_build_object('positions', l_positions, 'count', jsonb_array_length(l_positions), 'total', l_total);
END
$$;
COMMENT ON FUNCTION pm.list_positions(text, text, numeric, numeric, text, integer, integer) IS
    'pm.list_positions(asset, mode, size_min, size_max, status open|closed|all, limit, offset) -> {"positions": [Position ordered by asset, mode], "count": n in this page, "total": n matching}. NULL filters match everything; asset is case-insensitive; size bounds apply to |size| (net size for hedge rows); status open = any non-zero size or leg (pm.v_positions.is_open); limit NULL = no limit. Read only, no locks. Errors: 22023 naming the parameter for an unknown mode or status, a negative bound, limit or offset.';
