-- Budget status in fewer passes (issue 13: status + plan of 10,000 tenants within 100 ms).
--
-- The same function, the same results (as in ..._unpriced_usage.sql), computed with less work:
--
--   * the instants and dates derived from `as_of` and the watermark (data_until, freshness,
--     the month, quarter and year starts and ends, the trailing window's common start) are
--     computed once into PL/pgSQL variables, not per row: the old body evaluated
--     `date_trunc(..., as_of at time zone 'UTC')` in the FILTER of every per-tenant daily row
--     (80,000 rows at 10,000 tenants, three times each) and cross-joined a one-row CTE into
--     every pass;
--   * the spent sums are this month's monthly rollup row, joined to the budgets (no aggregate:
--     the state of a numeric sum is large, and 100,000 of them spilled to disk), plus, for
--     quarterly and yearly budgets only, one aggregate of the period's other months;
--   * the trailing window's spend is one sum per tenant and part of the window (this month,
--     earlier in the quarter, earlier in the year): one part on most days, since the common
--     window reaches back past the month's start only in a period's first `trailing_days` days;
--   * custom plans (`plan_cache_mode`): the planner sees the real dates, so its row estimates
--     are right and the joins are hash joins over whole sets (nested loops stay off, as before:
--     a nested loop over an index range per tenant is what made the first version take 40 s);
--     `work_mem` 64 MB, so the hash tables of 100,000 tenants stay in memory.
--
-- Incomplete windows are read from the earliest period start of any budget in force (a
-- superseded yearly or quarterly budget only widens the range: gaps before a tenant's period
-- start never count, and the latest gap of a tenant is the same).

create or replace function budgetd_budget_status(as_of timestamptz, trailing_days integer,
                                      max_lag_seconds integer,
                                      lookback_seconds integer default null,
                                      only_tenant text default null)
returns table (tenant_id text, tenant_state text, period text, period_start date,
               period_end date, budget_amount numeric, currency text, thresholds integer[],
               spent_amount numeric, trailing_amount numeric, trailing_start timestamptz,
               data_until timestamptz, forecast_amount numeric, complete boolean, state text)
language plpgsql stable security definer
set search_path = public, pg_temp set timezone = 'UTC' set jit = off
set enable_nestloop = off set enable_sort = off set max_parallel_workers_per_gather = 0
set plan_cache_mode = force_custom_plan set work_mem = '64MB' as $$
declare
    watermark constant timestamptz :=
        coalesce((select w.window_end from collector_watermark w), '-infinity');
    -- The end of the last collected window (never after as_of).
    until constant timestamptz := least(as_of, watermark);
    fresh constant boolean := watermark >= as_of - make_interval(secs => max_lag_seconds);
    month_start constant date := date_trunc('month', as_of at time zone 'UTC')::date;
    quarter_start constant date := date_trunc('quarter', as_of at time zone 'UTC')::date;
    year_start constant date := date_trunc('year', as_of at time zone 'UTC')::date;
    month_end constant date := (month_start + interval '1 month')::date;
    quarter_end constant date := (quarter_start + interval '3 months')::date;
    year_end constant date := (year_start + interval '1 year')::date;
    -- The trailing window starts at the later of this day and the period's start.
    common_start constant date :=
        (date_trunc('day', until at time zone 'UTC') - make_interval(days => trailing_days))::date;
    earliest_start date;
begin
    earliest_start := case
        when exists (select from budgets b where b.period = 'yearly' and b.effective_from <= as_of)
            then year_start
        when exists (select from budgets b
                     where b.period = 'quarterly' and b.effective_from <= as_of)
            then quarter_start
        else month_start end;
    return query
    with current_budget as (
        select distinct on (b.tenant_id) b.tenant_id, b.amount, b.currency, b.period,
               b.thresholds
        from budgets b
        where b.effective_from <= as_of and (only_tenant is null or b.tenant_id = only_tenant)
        -- descending, so a backward scan of unique (tenant_id, effective_from) serves it unsorted
        order by b.tenant_id desc, b.effective_from desc
    ),
    -- The spent sums: this month's rollup row; for quarters and years, the sum of their
    -- other months too (none is read when every budget in force is monthly).
    this_month as (
        select m.tenant_id, m.currency, m.amount
        from ledger_rollup_monthly m
        where m.month = month_start and (only_tenant is null or m.tenant_id = only_tenant)
    ),
    other_months as (
        select m.tenant_id, m.currency,
               sum(m.amount) filter (where m.month >= quarter_start and m.month < quarter_end)
                   as quarter,
               sum(m.amount) as year
        from ledger_rollup_monthly m
        where m.month >= earliest_start and m.month < year_end and m.month <> month_start
          and (only_tenant is null or m.tenant_id = only_tenant)
        group by m.tenant_id, m.currency
    ),
    -- The trailing window's spend from the recent per-tenant daily rows, per part: 0 in this
    -- month, 1 earlier in this quarter, 2 earlier in this year, 3 before. The window reaches
    -- back past the month's start only in a period's first `trailing_days` days; otherwise
    -- each tenant has one row, and one sum (the states of numeric sums are large: one per
    -- tenant, not four).
    trailing_parts as (
        select d.tenant_id, d.currency,
               case when d.day >= month_start then 0 when d.day >= quarter_start then 1
                    when d.day >= year_start then 2 else 3 end as part,
               sum(d.amount) as amount
        from ledger_rollup_tenant_daily d
        where d.day >= common_start and (only_tenant is null or d.tenant_id = only_tenant)
        group by 1, 2, 3
    ),
    -- Incomplete windows that count: a whole window (tenant_id null), one tenant's inputs, or
    -- one tenant's usage that could not be priced (missing from its spend, as its inputs
    -- would be: the same window rules apply).
    gaps as (
        select cw.window_start, g.tenant_id
        from collected_windows cw
        cross join lateral (
            select null::text as tenant_id where not cw.complete
            union all
            select u from unnest(cw.incomplete_tenants) u where cw.complete
        ) g
        where cw.window_start >= earliest_start::timestamp at time zone 'UTC'
          and cw.window_start < until
          and (lookback_seconds is null
               or cw.window_end > until - make_interval(secs => lookback_seconds))
          and (not cw.complete or cardinality(cw.incomplete_tenants) > 0)
        union all
        select u.window_start, u.tenant_id
        from unpriced_usage u
        where u.resolved_at is null
          and u.window_start >= earliest_start::timestamp at time zone 'UTC'
          and u.window_start < until
          and (lookback_seconds is null
               or u.window_end > until - make_interval(secs => lookback_seconds))
    ),
    last_gap as materialized (
        select g.tenant_id, max(g.window_start) as last from gaps g group by g.tenant_id
    ),
    bounded as (
        select b.tenant_id, b.amount, b.currency, b.period, b.thresholds,
               t.state as tenant_state, p.period_start, p.period_end,
               greatest(p.period_start, common_start)::timestamp at time zone 'UTC'
                   as trailing_start,
               coalesce(m.amount, 0)
                   + case b.period when 'monthly' then 0
                                   when 'quarterly' then coalesce(o.quarter, 0)
                                   else coalesce(o.year, 0) end as spent,
               coalesce(t0.amount, 0)
                   + case b.period when 'monthly' then 0
                                   when 'quarterly' then coalesce(t1.amount, 0)
                                   else coalesce(t1.amount, 0) + coalesce(t2.amount, 0) end
                   as trailing,
               tg.last as last_gap
        from current_budget b
        join tenants t on t.id = b.tenant_id
        left join this_month m on m.tenant_id = b.tenant_id and m.currency = b.currency
        left join other_months o on o.tenant_id = b.tenant_id and o.currency = b.currency
        left join trailing_parts t0
          on t0.tenant_id = b.tenant_id and t0.currency = b.currency and t0.part = 0
        left join trailing_parts t1
          on t1.tenant_id = b.tenant_id and t1.currency = b.currency and t1.part = 1
        left join trailing_parts t2
          on t2.tenant_id = b.tenant_id and t2.currency = b.currency and t2.part = 2
        left join last_gap tg on tg.tenant_id = b.tenant_id
        cross join lateral (
            select case b.period when 'monthly' then month_start
                                 when 'quarterly' then quarter_start
                                 else year_start end as period_start,
                   case b.period when 'monthly' then month_end
                                 when 'quarterly' then quarter_end
                                 else year_end end as period_end
        ) p
    )
    select b.tenant_id, b.tenant_state, b.period, b.period_start, b.period_end, b.amount,
           b.currency::text, b.thresholds, b.spent, b.trailing, b.trailing_start, until,
           f.forecast,
           fresh
             and coalesce((select g.last from last_gap g where g.tenant_id is null), '-infinity')
                 < b.period_start::timestamp at time zone 'UTC'
             and coalesce(b.last_gap, '-infinity') < b.period_start::timestamp at time zone 'UTC',
           case when b.spent >= b.amount and (b.spent > 0 or b.amount = 0) then 'exceeded'
                when f.forecast >= b.amount and f.forecast > 0 then 'at_risk'
                when b.spent * 100 >= b.amount * b.thresholds[1] and b.spent > 0 then 'warning'
                else 'ok' end
    from bounded b
    cross join lateral (
        select case
                   when until <= b.trailing_start
                     or until >= b.period_end::timestamp at time zone 'UTC'
                       then b.spent
                   else b.spent + round(b.trailing
                        * extract(epoch from (b.period_end::timestamp at time zone 'UTC' - until))
                        / extract(epoch from (until - b.trailing_start)), 6)
               end as forecast
    ) f;
end
$$;
