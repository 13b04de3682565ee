-- The API's reads: one Position, a filtered list, the portfolio, a position's history (audit trail)
-- and its state at any time (from the ledger), holdings and trade statistics. Read only.
-- Repeatable (docs/migrations.md): re-applied whenever this file changes. Plain SQL, safe to run twice.

-- pm.get_position(asset, mode) -> jsonb
-- THE read of one Position (with its metadata); NULL when there is none.
CREATE OR REPLACE FUNCTION pm.get_position(p_asset text, p_mode text DEFAULT 'one-way') RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- PL/pgSQL: its query plan is cached per session (a SQL function with a FROM is planned per call)
    RETURN (SELECT pm.position_json(v) FROM pm.v_positions v WHERE v.asset = upper(p_asset) AND v.mode = p_mode);
END
$$;
COMMENT ON FUNCTION pm.get_position(text, text) IS
    'pm.get_position(asset any case, mode) -> the Position jsonb (pm.position_json, operator metadata included), or NULL when there is no such position. The API''s GET /api/v1/positions/{asset} and the manual writers'' results. Read only.';

-- pm.position_if_changed(asset, mode, known version) -> (version, body)
-- One position's version, and its Position JSON text only when that is not the version the caller holds.
CREATE OR REPLACE FUNCTION pm.position_if_changed(p_asset text, p_mode text, p_known_version integer)
RETURNS TABLE (version integer, body text)
LANGUAGE sql STABLE AS $$
    -- one statement, one snapshot: the body is of that version (pm.get_position, STABLE, reads with
    -- the caller's snapshot); inlined into its callers' statements
    SELECT p.version, CASE WHEN p.version IS DISTINCT FROM p_known_version THEN pm.get_position(p.asset, p.mode)::text END
      FROM public.positions p
     WHERE p.asset = upper(p_asset) AND p.mode = p_mode
$$;
COMMENT ON FUNCTION pm.position_if_changed(text, text, integer) IS
    'pm.position_if_changed(asset any case, mode, known version or NULL) -> no row when there is no such position, else one row (version, body): body = the Position JSON text (pm.get_position) of that version, NULL when it is the known version (the caller holds it already). The read of GET /api/v1/positions/{asset} (pm.api_read_position, and the API''s statement without admission). Read only.';

-- pm.position_matches(row of pm.v_positions, asset, mode, size_min, size_max, status) -> boolean
-- Whether a position passes the list's filters (each NULL filter matches everything).
CREATE OR REPLACE FUNCTION pm.position_matches(v pm.v_positions, p_asset text, p_mode text, p_size_min numeric,
                                               p_size_max numeric, p_status text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT (p_asset IS NULL OR v.asset = p_asset)
       AND (p_mode IS NULL OR v.mode = p_mode)
       AND (p_size_min IS NULL OR abs(v.size) >= p_size_min)
       AND (p_size_max IS NULL OR abs(v.size) <= p_size_max)
       AND (p_status = 'all' OR v.is_open = (p_status = 'open'))
$$;
COMMENT ON FUNCTION pm.position_matches(pm.v_positions, text, text, numeric, numeric, text) IS
    'pm.position_matches(row of pm.v_positions, asset (exact, upper case) or NULL, mode or NULL, size_min or NULL, size_max or NULL, status open|closed|all) -> boolean: the filter of pm.list_positions_text; size bounds apply to |size|, open = pm.v_positions.is_open. Pure (inlined into the list''s statements).';

-- pm.list_positions_text(asset, mode, size_min, size_max, status, limit, offset) -> text
-- Positions matching every given filter, ordered by (asset, mode), one page, as JSON text.
CREATE OR REPLACE FUNCTION pm.list_positions_text(p_asset text DEFAULT NULL, p_mode text DEFAULT NULL,
                                                  p_size_min numeric DEFAULT NULL, p_size_max numeric DEFAULT NULL,
                                                  p_status text DEFAULT 'all', p_limit integer DEFAULT NULL,
                                                  p_offset integer DEFAULT 0)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    l_asset text := upper(nullif(btrim(p_asset), ''));
    l_status text := coalesce(p_status, 'all');
    l_offset integer := coalesce(p_offset, 0);
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

    -- Counted first (cheap: only the filter's columns are computed), then rendered in one
    -- statement that returns the page's whole JSON: one string_agg over the head, the positions
    -- in (asset, mode) order and the tail, each piece with its own separator (none before the
    -- page's first position: the first of all, one index probe, or row_number() within a filtered
    -- or later page). Neither concat() nor || around the aggregate, nor an INTO: each would copy
    -- the 400 kB text once more (and concat grows its copy piece by piece). The aggregate
    -- reads its input in the order the UNION ALL's parts and the ordered part deliver it (an
    -- Append runs its parts one after the other). pm.position_text is called on the view's own
    -- row, so its fields are plain columns. The usual call (no filter, one page) has a statement
    -- of its own: its cached plan has no filter parameters for the planner to guess the
    -- selectivity of (with them it guesses a few rows and joins the metadata in a nested loop).
    IF l_asset IS NULL AND p_mode IS NULL AND p_size_min IS NULL AND p_size_max IS NULL AND l_status = 'all' THEN
        SELECT count(*) INTO l_total FROM public.positions;
        IF l_offset = 0 AND (p_limit IS NULL OR p_limit >= l_total) THEN
            RETURN (SELECT string_agg(s.piece, s.sep) FROM (
                SELECT '{"positions":[' AS piece, '' AS sep
                UNION ALL
                (SELECT pm.position_text(v), CASE WHEN v.asset = f.asset AND v.mode = f.mode THEN '' ELSE ',' END
                   FROM pm.v_positions v,
                        (SELECT p.asset, p.mode FROM public.positions p ORDER BY p.asset, p.mode LIMIT 1) f
                  ORDER BY v.asset, v.mode)
                UNION ALL
                SELECT concat('],"count":', l_total, ',"total":', l_total, '}'), '') s);
        END IF;
    ELSE
        SELECT count(*) INTO l_total
          FROM pm.v_positions v WHERE pm.position_matches(v, l_asset, p_mode, p_size_min, p_size_max, l_status);
    END IF;
    RETURN (SELECT string_agg(s.piece, s.sep) FROM (
        SELECT '{"positions":[' AS piece, '' AS sep
        UNION ALL
        (SELECT pm.position_text(v), CASE WHEN row_number() OVER (ORDER BY v.asset, v.mode) = l_offset + 1 THEN '' ELSE ',' END
           FROM pm.v_positions v
          WHERE pm.position_matches(v, l_asset, p_mode, p_size_min, p_size_max, l_status)
          ORDER BY v.asset, v.mode
          LIMIT p_limit OFFSET l_offset)
        UNION ALL
        SELECT concat('],"count":', least(p_limit, greatest(l_total - l_offset, 0)), ',"total":', l_total, '}'), '') s);
END
$$;
COMMENT ON FUNCTION pm.list_positions_text(text, text, numeric, numeric, text, integer, integer) IS
    'pm.list_positions_text(asset, mode, size_min, size_max, status open|closed|all, limit, offset) -> JSON text {"positions": [Position (pm.position_text) ordered by asset, mode], "count": n in this page, "total": n matching}. NULL filters match everything; asset is case-insensitive; size bounds apply to |size| (net size for hedge rows); status open = any non-zero size or leg (pm.v_positions.is_open); limit NULL = no limit. GET /api/v1/positions (through pm.api_list_positions). Read only, no locks. Errors: 22023 naming the parameter for an unknown mode or status, a negative bound, limit or offset.';

-- pm.list_positions(asset, mode, size_min, size_max, status, limit, offset) -> jsonb
-- pm.list_positions_text as jsonb, for callers that combine it with other JSON.
CREATE OR REPLACE FUNCTION pm.list_positions(p_asset text DEFAULT NULL, p_mode text DEFAULT NULL,
                                             p_size_min numeric DEFAULT NULL, p_size_max numeric DEFAULT NULL,
                                             p_status text DEFAULT 'all', p_limit integer DEFAULT NULL,
                                             p_offset integer DEFAULT 0)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT pm.list_positions_text(p_asset, p_mode, p_size_min, p_size_max, p_status, p_limit, p_offset)::jsonb
$$;
COMMENT ON FUNCTION pm.list_positions(text, text, numeric, numeric, text, integer, integer) IS
    'pm.list_positions(asset, mode, size_min, size_max, status open|closed|all, limit, offset) -> jsonb {"positions", "count", "total"}: pm.list_positions_text as jsonb (same filters, order and errors). Read only.';

-- pm.portfolio_json(asset or NULL) -> jsonb
-- PortfolioMetrics: the pm.v_portfolio figures (decimals as strings) plus by_asset.
CREATE OR REPLACE FUNCTION pm.portfolio_json(p_asset text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'total_exposure_usdt', pm.dec(t.total_exposure_usdt), 'net_exposure_usdt', pm.dec(t.net_exposure_usdt),
        'total_unrealized_pnl_usdt', pm.dec(t.total_unrealized_pnl_usdt),
        'total_realized_pnl_usdt', pm.dec(t.total_realized_pnl_usdt), 'total_pnl_usdt', pm.dec(t.total_pnl_usdt),
        'portfolio_value_usdt', pm.dec(t.portfolio_value_usdt), 'open_positions_count', t.open_positions_count,
        'long_positions_count', t.long_positions_count, 'short_positions_count', t.short_positions_count,
        'calculated_at', pm.iso(t.calculated_at),
        'by_asset', coalesce((SELECT jsonb_object_agg(b.asset, jsonb_build_object(
                                  'exposure_usdt', pm.dec(b.exposure_usdt), 'net_exposure_usdt', pm.dec(b.net_exposure_usdt),
                                  'unrealized_pnl_usdt', pm.dec(b.unrealized_pnl_usdt),
                                  'realized_pnl_usdt', pm.dec(b.realized_pnl_usdt), 'size', pm.dec(b.size)))
                                FROM pm.v_portfolio_by_asset b
                               WHERE p_asset IS NULL OR b.asset = upper(p_asset)), '{}'::jsonb))
      FROM pm.portfolio_totals(p_asset) t
$$;
COMMENT ON FUNCTION pm.portfolio_json(text) IS
    'pm.portfolio_json(asset or NULL) -> PortfolioMetrics jsonb: the pm.v_portfolio columns (decimals as strings) plus by_asset {ASSET: {exposure_usdt, net_exposure_usdt, unrealized_pnl_usdt, realized_pnl_usdt, size}}, for all positions or one asset. Read only.';

-- pm.position_history(asset, mode, limit, offset) -> jsonb
-- The audit trail of one position, newest first: every position_updated row of pm.outbox.
CREATE OR REPLACE FUNCTION pm.position_history(p_asset text, p_mode text DEFAULT 'one-way',
                                               p_limit integer DEFAULT 100, p_offset integer DEFAULT 0)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id uuid;
    v_items jsonb;
    v_more boolean;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        PERFORM pm.bad_input('limit', format('must be between 1 and 1000, got %s', coalesce(p_limit::text, 'nothing')));
    END IF;
    IF p_offset IS NULL OR p_offset < 0 THEN
        PERFORM pm.bad_input('offset', format('must be >= 0, got %s', coalesce(p_offset::text, 'nothing')));
    END IF;
    v_id := (pm.existing_position(p_asset, p_mode)).id;
    -- one row more than asked tells whether another page exists; the index outbox_position_history
    -- (position_id, id) serves the order without a sort
    WITH page AS (
        SELECT o.*, pm.outbox_body(o) AS body FROM pm.outbox o
         WHERE o.position_id = v_id AND o.event_type = 'position_updated'
         ORDER BY o.id DESC
         LIMIT p_limit + 1 OFFSET p_offset
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'id', o.id, 'event_id', o.event_id, 'version', o.version, 'source', o.source, 'action', o.action,
               'actor', o.actor, 'client_addr', host(o.client_addr), 'trace_id', o.trace_id,
               'created_at', pm.iso(o.created_at), 'detail', o.detail,
               'position', o.body - 'event_id' - 'event_type' - 'update_source' - 'trace_id' - 'timestamp')
               ORDER BY o.id DESC) FILTER (WHERE o.rn <= p_limit), '[]'::jsonb),
           count(*) > p_limit
      INTO v_items, v_more
      FROM (SELECT page.*, row_number() OVER (ORDER BY page.id DESC) AS rn FROM page) o;
    RETURN jsonb_build_object('history', v_items, 'count', jsonb_array_length(v_items), 'has_more', v_more);
END
$$;
COMMENT ON FUNCTION pm.position_history(text, text, integer, integer) IS
    'pm.position_history(asset, mode, limit 1..1000, offset >= 0) -> {"history": [{id, event_id, version, source, action, actor, client_addr (the address of the API client, NULL for consumers and jobs), trace_id, created_at, detail, position}], "count", "has_more"}: the audit trail (position_updated rows of pm.outbox), newest first; position is the Position as it was after that change. Read only. Errors: 22023 naming mode/limit/offset, P0002 when the position does not exist.';

-- pm.state_json(state, mode) -> jsonb
-- The accounting fields of a ledger state (pm.pos_state) as Position-like JSON.
CREATE OR REPLACE FUNCTION pm.state_json(st pm.pos_state, p_mode text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'side', pm.pos_side(p_mode, st.size, st.long_size, st.short_size),
        'is_open', NOT pm.is_flat(st),
        'size', pm.dec(st.size), 'long_size', pm.dec(st.long_size), 'short_size', pm.dec(st.short_size),
        'average_entry_price', pm.dec(st.avg_price),
        'long_avg_price', pm.dec(st.long_avg), 'short_avg_price', pm.dec(st.short_avg),
        'realized_pnl', pm.dec(st.realized),
        'opened_at', CASE WHEN st.opened_at > '-infinity' THEN pm.iso(st.opened_at) END,
        'closed_at', pm.iso(st.closed_at))
$$;
COMMENT ON FUNCTION pm.state_json(pm.pos_state, text) IS
    'pm.state_json(ledger state, mode) -> {side, is_open, size, long_size, short_size, average_entry_price, long_avg_price, short_avg_price, realized_pnl, opened_at, closed_at} with decimals as strings. Pure.';

-- pm.position_as_of(asset, mode, as_of) -> jsonb
-- The position as it was at a moment, from the state_after of the last ledger row at or before it.
CREATE OR REPLACE FUNCTION pm.position_as_of(p_asset text, p_mode text, p_as_of timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    pos public.positions;
    r pm.executions;
BEGIN
    IF p_as_of IS NULL OR NOT isfinite(p_as_of) THEN
        PERFORM pm.bad_input('as_of', 'expected a finite timestamp');
    END IF;
    pos := pm.existing_position(p_asset, p_mode);
    -- the ledger's own order; the index executions_position_arrival_order serves it backwards
    SELECT * INTO r FROM pm.executions x
     WHERE x.position_id = pos.id AND x.exec_time <= p_as_of
     ORDER BY x.exec_time DESC, x.seq DESC, x.arrival DESC, x.exec_key DESC
     LIMIT 1;
    -- an opening balance (a position older than its ledger) is known from the row's creation on
    IF r.exec_key IS NULL OR (r.kind = 'opening' AND pos.created_at IS NOT NULL
                              AND p_as_of < pos.created_at AT TIME ZONE 'UTC') THEN
        RAISE EXCEPTION 'position %/% did not exist at % (no ledger row at or before it)', pos.asset, pos.mode, pm.iso(p_as_of)
            USING ERRCODE = 'P0002';
    END IF;
    RETURN jsonb_build_object('id', pos.id, 'asset', pos.asset, 'mode', pos.mode, 'as_of', pm.iso(p_as_of))
        || pm.state_json(r.state_after, pos.mode)
        || jsonb_build_object('last_execution', jsonb_build_object(
               'exec_key', r.exec_key, 'kind', r.kind, 'source', r.source,
               'exec_time', CASE WHEN r.exec_time > '-infinity' THEN pm.iso(r.exec_time) END),
               'reconstructed_from', 'ledger');
END
$$;
COMMENT ON FUNCTION pm.position_as_of(text, text, timestamptz) IS
    'pm.position_as_of(asset, mode, as_of) -> {id, asset, mode, as_of, side, is_open, size, legs, average prices, realized_pnl, opened_at, closed_at, last_execution {exec_key, kind, source, exec_time}, reconstructed_from}: the state_after of the last ledger row (by execution time, then sequence) at or before as_of, so late-delivered fills count at their execution time. Prices and unrealized PnL are not part of the ledger and are not reconstructed. Read only. Errors: 22023 bad mode or as_of, P0002 when the position does not exist or did not exist at as_of (an opening balance counts from the row''s created_at).';

-- Holdings and trade statistics. A holding is the life of a position from opening (leaving flat, or a
-- one-way flip) to flat or the next flip. Its realized PnL is the sum of the differences of
-- state_after.realized between consecutive ledger rows that belong to it (fees and funding
-- included). A flip's row closes the old holding (its realized part and fee count there) and opens
-- the new one. An opening balance (a position that existed before its ledger) opens a holding whose
-- earlier PnL is unknown: its own difference counts as 0. Rows while flat (funding after the close)
-- belong to no holding.

-- pm.v_holding_rows
-- Every ledger row with the holding it adds to, that PnL, and whether it opens or closes one.
CREATE OR REPLACE VIEW pm.v_holding_rows AS
WITH ordered AS (
    SELECT x.position_id, x.exec_key, x.kind, x.exec_time, x.seq, x.arrival, x.state_after,
           lag(x.state_after) OVER w AS prev_state,
           -- (a composite IS NOT NULL is true only when every field is: test the key instead)
           lag(x.exec_key) OVER w IS NOT NULL AS has_prev,
           p.mode
      FROM pm.executions x
      JOIN public.positions p ON p.id = x.position_id
    WINDOW w AS (PARTITION BY x.position_id ORDER BY x.exec_time, x.seq, x.arrival, x.exec_key)
), flagged AS (
    SELECT o.*,
           o.has_prev AND NOT pm.is_flat(o.prev_state) AS was_open,
           NOT pm.is_flat(o.state_after) AS now_open,
           o.mode = 'one-way' AND o.has_prev
               AND sign((o.prev_state).size) * sign((o.state_after).size) < 0 AS flipped
      FROM ordered o
), numbered AS (
    SELECT f.*,
           sum(CASE WHEN (NOT f.was_open AND f.now_open) OR f.flipped THEN 1 ELSE 0 END)
               OVER (PARTITION BY f.position_id ORDER BY f.exec_time, f.seq, f.arrival, f.exec_key) AS opened_count
      FROM flagged f
)
SELECT n.position_id, n.exec_key, n.kind, n.exec_time,
       -- the holding this row adds to: a flip's row closes the old one
       CASE WHEN n.flipped THEN n.opened_count - 1
            WHEN n.was_open OR n.now_open THEN n.opened_count END AS holding_no,
       CASE WHEN n.kind = 'opening' THEN 0
            ELSE (n.state_after).realized - coalesce((n.prev_state).realized, 0) END AS realized_delta,
       -- the holding this row opens (NULL when it opens none)
       CASE WHEN (NOT n.was_open AND n.now_open) OR n.flipped THEN n.opened_count END AS opens_holding_no,
       n.was_open AND (NOT n.now_open OR n.flipped) AS closes,
       CASE WHEN n.mode = 'hedge' THEN 'hedge'
            WHEN (n.state_after).size > 0 THEN 'long'
            WHEN (n.state_after).size < 0 THEN 'short' END AS side_after
  FROM numbered n;
COMMENT ON VIEW pm.v_holding_rows IS
    'Every ledger row with the holding (per position, numbered from 1) it adds realized PnL to, that PnL, the holding it opens (a one-way flip closes one and opens the next) and whether it closes its holding. Basis of pm.v_holdings.';

-- pm.v_holdings
-- One row per holding: when it opened and closed, its side and realized PnL.
CREATE OR REPLACE VIEW pm.v_holdings AS
-- rows is referenced twice, so PostgreSQL computes the window pass once (a materialized CTE)
WITH hr AS (
    SELECT * FROM pm.v_holding_rows
), totals AS (
    SELECT r.position_id, r.holding_no,
           max(r.exec_time) FILTER (WHERE r.closes) AS closed_at,
           coalesce(bool_or(r.closes), false) AS is_closed,
           round(sum(r.realized_delta), 8) AS realized_pnl,
           count(*) AS ledger_rows
      FROM hr r
     WHERE r.holding_no IS NOT NULL
     GROUP BY r.position_id, r.holding_no
), openings AS (
    SELECT r.position_id, r.opens_holding_no AS holding_no, r.exec_time AS opened_at, r.side_after AS side,
           r.kind = 'opening' AS from_opening_balance
      FROM hr r
     WHERE r.opens_holding_no IS NOT NULL
)
-- every holding has its opening row; one opened by a flip may have no row of its own yet
SELECT o.position_id, p.asset, p.mode, o.holding_no, o.side,
       CASE WHEN o.opened_at = '-infinity' THEN NULL ELSE o.opened_at END AS opened_at,
       t.closed_at, coalesce(t.is_closed, false) AS is_closed, coalesce(t.realized_pnl, 0) AS realized_pnl,
       coalesce(t.ledger_rows, 0) AS ledger_rows, o.from_opening_balance
  FROM openings o
  LEFT JOIN totals t ON t.position_id = o.position_id AND t.holding_no = o.holding_no
  JOIN public.positions p ON p.id = o.position_id;
COMMENT ON VIEW pm.v_holdings IS
    'One row per holding of every position, from the ledger: side at opening (long|short|hedge), opened_at (NULL for a holding taken over as an opening balance), closed_at, is_closed, realized_pnl (fees and funding included; a flip''s realized part and fee count in the holding it closes), ledger_rows, from_opening_balance (its PnL before the ledger is unknown).';

-- pm.v_trade_statistics
-- The statistics as numbers (Grafana, pm.trade_statistics_json). Exactly one row, zeros when empty.
CREATE OR REPLACE VIEW pm.v_trade_statistics AS
WITH holdings AS (
    SELECT * FROM pm.v_holdings        -- referenced twice: computed once
), closed AS (
    SELECT count(*) AS n,
           count(*) FILTER (WHERE h.realized_pnl > 0) AS wins,
           count(*) FILTER (WHERE h.realized_pnl < 0) AS losses,
           coalesce(sum(h.realized_pnl) FILTER (WHERE h.realized_pnl > 0), 0) AS gross_profit,
           coalesce(sum(h.realized_pnl) FILTER (WHERE h.realized_pnl < 0), 0) AS gross_loss,
           coalesce(sum(h.realized_pnl), 0) AS net,
           max(h.realized_pnl) FILTER (WHERE h.realized_pnl > 0) AS largest_win,
           min(h.realized_pnl) FILTER (WHERE h.realized_pnl < 0) AS largest_loss
      FROM holdings h WHERE h.is_closed
), open_h AS (
    SELECT count(*) AS n FROM holdings h WHERE NOT h.is_closed
), exposure AS (
    SELECT coalesce(sum(v.exposure_usdt), 0) AS total, max(v.exposure_usdt) AS largest
      FROM pm.v_positions v WHERE v.is_open AND v.exposure_usdt IS NOT NULL
), risk AS (
    SELECT count(*) AS n,
           coalesce(array_agg(v.asset || CASE WHEN v.mode = 'hedge' THEN '/hedge' ELSE '' END ORDER BY v.asset, v.mode),
                    ARRAY[]::text[]) AS assets
      FROM pm.v_positions v
      JOIN pm.position_meta m ON m.position_id = v.id
     WHERE v.is_open AND v.current_price IS NOT NULL AND m.stop_loss IS NOT NULL
       AND ((v.side = 'long' AND v.current_price <= m.stop_loss)
            OR (v.side = 'short' AND v.current_price >= m.stop_loss))
)
SELECT (SELECT count(*) FROM pm.v_positions v WHERE v.is_open)::integer AS open_positions,
       open_h.n::integer AS open_holdings,
       closed.n::integer AS closed_holdings,
       closed.wins::integer AS winning_holdings,
       closed.losses::integer AS losing_holdings,
       round(closed.wins * 100.0 / nullif(closed.n, 0), 4) AS win_rate_pct,
       round(closed.gross_profit / nullif(-closed.gross_loss, 0), 8) AS profit_factor,
       round(closed.gross_profit / nullif(closed.wins, 0), 8) AS average_win,
       round(closed.gross_loss / nullif(closed.losses, 0), 8) AS average_loss,
       closed.largest_win,
       closed.largest_loss,
       closed.gross_profit,
       closed.gross_loss,
       closed.net AS closed_realized_pnl,
       round(exposure.largest * 100 / nullif(exposure.total, 0), 4) AS largest_position_pct,
       risk.n::integer AS positions_at_risk,
       risk.assets AS positions_at_risk_assets,
       now() AS calculated_at,
       -- the portfolio's counts and totals beside the statistics (the same definitions as pm.v_portfolio)
       (SELECT count(*) FROM public.positions)::integer AS total_positions,
       ((SELECT count(*) FROM public.positions) - t.open_positions_count)::integer AS closed_positions,
       t.total_exposure_usdt AS total_market_value,
       t.total_unrealized_pnl_usdt AS total_unrealized_pnl,
       t.total_realized_pnl_usdt AS total_realized_pnl
  FROM closed, open_h, exposure, risk, pm.portfolio_totals(NULL) t;
COMMENT ON VIEW pm.v_trade_statistics IS
    'Exactly one row of trade statistics over the holdings of the ledger: open_positions, open/closed holdings, wins, losses, win_rate_pct (of closed holdings, NULL when none), profit_factor (gross profit / gross loss, NULL without losses), average_win, average_loss (negative), largest win/loss, closed_realized_pnl, largest_position_pct (largest open exposure / total exposure x 100), positions_at_risk (open long at or below its stop_loss, open short at or above it); and the portfolio beside them: total_positions (every position, open or flat), closed_positions (flat ones), total_market_value (= total_exposure_usdt: |size| x current price over open positions with a price), total_unrealized_pnl, total_realized_pnl (as pm.v_portfolio). Read by Grafana and GET /api/v1/portfolio/summary.';

-- pm.trade_statistics_json() -> jsonb
-- GET /api/v1/portfolio/summary: pm.v_trade_statistics with decimals as strings.
CREATE OR REPLACE FUNCTION pm.trade_statistics_json() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'open_positions', s.open_positions, 'open_holdings', s.open_holdings, 'closed_holdings', s.closed_holdings,
        'winning_holdings', s.winning_holdings, 'losing_holdings', s.losing_holdings,
        'win_rate_pct', pm.dec(s.win_rate_pct), 'profit_factor', pm.dec(s.profit_factor),
        'average_win', pm.dec(s.average_win), 'average_loss', pm.dec(s.average_loss),
        'largest_win', pm.dec(s.largest_win), 'largest_loss', pm.dec(s.largest_loss),
        'gross_profit', pm.dec(s.gross_profit), 'gross_loss', pm.dec(s.gross_loss),
        'closed_realized_pnl', pm.dec(s.closed_realized_pnl),
        'largest_position_pct', pm.dec(s.largest_position_pct),
        'positions_at_risk', s.positions_at_risk, 'positions_at_risk_assets', to_jsonb(s.positions_at_risk_assets),
        'calculated_at', pm.iso(s.calculated_at),
        'total_positions', s.total_positions, 'closed_positions', s.closed_positions,
        'total_market_value', pm.dec(s.total_market_value), 'total_unrealized_pnl', pm.dec(s.total_unrealized_pnl),
        'total_realized_pnl', pm.dec(s.total_realized_pnl))
      FROM pm.v_trade_statistics s
$$;
COMMENT ON FUNCTION pm.trade_statistics_json() IS
    'pm.trade_statistics_json() -> jsonb of pm.v_trade_statistics (decimals as strings, NULL when undefined, timestamp ISO Z). Reads the whole ledger (one pass with window functions). Read only.';
