-- Budget status, incrementally (issue 13: the enforcer's status + plan of 10,000 tenants within
-- 100 ms).
--
-- The status function reads every budget, every tenant's period and trailing rollups and the
-- gaps: ~90 ms at 10,000 tenants however little changed. Between two enforcer cycles, what
-- changes is nearly always one thing: the collector committed windows of the current day, which
-- moves one per-tenant daily row per tenant. The enforcer now keeps each tenant's status between
-- cycles and, when nothing else changed, reads only that day's rows, the watermark and the gaps
-- (`Store::refresh_statuses`); anything else reloads the whole status from the function.
--
--   * `ledger_status_changes` says what changed, in commit order: one row per statement that
--     writes the per-tenant daily rollup (its first and last day) and one per statement that
--     changes budgets or tenants' states (no days: the enforcer reloads in full). Each row holds
--     its transaction id (`xid8`); a reader that took snapshot S before finds the rows committed
--     since as those whose id is at least `pg_snapshot_xmin(S)` and not visible in S. A sequence
--     would not do: a transaction that took its number first can commit last, after a reader
--     moved past it.
--   * The monthly rollup is not logged: the write statements (`ROLLUP` in store/entries.rs) add
--     the same per-tenant day sums to both rollups, so a change to the monthly row is a change
--     to that month's daily rows, which are.
--   * Rows are pruned a day after they were logged, once no snapshot can miss them; the highest
--     id pruned is kept in `ledger_status_changes_pruned`, and a reader whose last snapshot is
--     older than it reloads in full (it might have missed a pruned row). A reader also reloads
--     when transaction ids are behind its last snapshot's (the history was replaced: a restore,
--     a point-in-time recovery). Triggers do not fire with `session_replication_role = replica`:
--     a restore that way is followed by a restart of the enforcer or waits for its next new day.
--   * The status function's gaps and forecast move into functions of their own, which the
--     enforcer's refresh calls too (the gaps) or mirrors in Rust (the forecast, held equal by a
--     test). The forecast is now the exact quotient rounded half away from zero to 6 places:
--     `round(a / b, 6)` rounded the quotient twice (first to the division's own scale), which
--     cannot be reproduced exactly outside Postgres. The two differ only where the quotient's
--     7th and later digits are 4999…9 beyond 16 significant digits. The gaps' function reads
--     no time zone (dates become UTC instants explicitly) and is inlined where it is called.

create table ledger_status_changes (
    xid       xid8 not null default pg_current_xact_id(),
    logged_at timestamptz not null default clock_timestamp(),
    source    text not null,
    -- The days of the per-tenant daily rollup the statement wrote; null for any other change.
    first_day date,
    last_day  date,
    check ((first_day is null) = (last_day is null) and first_day <= last_day)
);

create index ledger_status_changes_xid on ledger_status_changes (xid);

create table ledger_status_changes_pruned (
    singleton boolean primary key default true check (singleton),
    through   xid8 not null
);
insert into ledger_status_changes_pruned (through) values ('0');

-- Drops the rows logged more than a day ago whose transactions ended before every running one.
-- One pruner at a time: a writer that finds another pruning skips it rather than wait for that
-- writer's commit (the pruned marker is one row; waiting on it would queue writers behind each
-- other and could deadlock two of them on their rollup rows).
create function budgetd_prune_status_changes() returns void
language sql as $$
    with pruner as (
        select p.singleton from ledger_status_changes_pruned p for update skip locked
    ),
    gone as (
        delete from ledger_status_changes
        where exists (select from pruner)
          and logged_at < clock_timestamp() - interval '1 day'
          and xid < pg_snapshot_xmin(pg_current_snapshot())
        returning xid
    )
    update ledger_status_changes_pruned p set through = greatest(p.through, g.last)
    from (select max(xid) as last from gone) g
    where g.last is not null;
$$;

create function budgetd_log_rollup_change() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        insert into ledger_status_changes (source, first_day, last_day)
        select tg_table_name, min(day), max(day) from new_rows having count(*) > 0;
    elsif tg_op = 'UPDATE' then
        insert into ledger_status_changes (source, first_day, last_day)
        select tg_table_name, min(day), max(day)
        from (select day from old_rows union all select day from new_rows) d
        having count(*) > 0;
    else
        insert into ledger_status_changes (source, first_day, last_day)
        select tg_table_name, min(day), max(day) from old_rows having count(*) > 0;
    end if;
    perform budgetd_prune_status_changes();
    return null;
end
$$;

create trigger ledger_rollup_tenant_daily_inserted after insert on ledger_rollup_tenant_daily
    referencing new table as new_rows
    for each statement execute function budgetd_log_rollup_change();
create trigger ledger_rollup_tenant_daily_updated after update on ledger_rollup_tenant_daily
    referencing old table as old_rows new table as new_rows
    for each statement execute function budgetd_log_rollup_change();
create trigger ledger_rollup_tenant_daily_deleted after delete on ledger_rollup_tenant_daily
    referencing old table as old_rows
    for each statement execute function budgetd_log_rollup_change();

create function budgetd_log_status_change() returns trigger
language plpgsql as $$
begin
    insert into ledger_status_changes (source) values (tg_table_name);
    return null;
end
$$;

create trigger budgets_status_changed after insert or update or delete or truncate on budgets
    for each statement execute function budgetd_log_status_change();
create trigger tenants_status_changed after update of state or delete on tenants
    for each statement execute function budgetd_log_status_change();
create trigger ledger_rollup_tenant_daily_truncated after truncate on ledger_rollup_tenant_daily
    for each statement execute function budgetd_log_status_change();
create trigger ledger_rollup_monthly_truncated after truncate on ledger_rollup_monthly
    for each statement execute function budgetd_log_status_change();

-- The last incomplete window per tenant (null: a whole window) among the windows from
-- `earliest` until `until` that make a status incomplete (see budgetd_budget_status).
create function budgetd_status_gaps(earliest date, until timestamptz, lookback_seconds integer)
returns table (tenant_id text, last timestamptz)
language sql stable as $$
    with gaps as (
        select cw.window_start, g.tenant_id
        from collected_windows cw
        cross join lateral (
            select null::text as tenant_id where not cw.complete
            union all
            select u from unnest(cw.incomplete_tenants) u where cw.complete
        ) g
        where cw.window_start >= earliest::timestamp at time zone 'UTC'
          and cw.window_start < until
          and (lookback_seconds is null
               or cw.window_end > until - make_interval(secs => lookback_seconds))
          and (not cw.complete or cardinality(cw.incomplete_tenants) > 0)
        union all
        select u.window_start, u.tenant_id
        from unpriced_usage u
        where u.resolved_at is null
          and u.window_start >= earliest::timestamp at time zone 'UTC'
          and u.window_start < until
          and (lookback_seconds is null
               or u.window_end > until - make_interval(secs => lookback_seconds))
    )
    select g.tenant_id, max(g.window_start) from gaps g group by g.tenant_id
$$;

-- The period's forecast: spent plus the trailing window's spend rate over the rest of the
-- period, to 6 places: the exact quotient rounded half away from zero (`div` truncates the
-- exact quotient, here to 7 places; rounding that to 6 is rounding the quotient, and the
-- product with 0.0000001 is exact). Mirrored by `ledger::enforcement::forecast`. Each argument
-- that is an expression is used once, so the planner inlines the function.
create function budgetd_budget_forecast(spent_amount numeric, trailing_amount numeric,
                                        until timestamptz, trailing_start timestamptz,
                                        period_end timestamptz)
returns numeric
language sql immutable parallel safe as $$
    select case
               when until <= trailing_start or until >= period_end then spent_amount
               else spent_amount
                    + round(div(trailing_amount * extract(epoch from (period_end - until))
                                    * 10000000,
                                extract(epoch from (until - trailing_start)))
                            * 0.0000001, 6)
           end
$$;

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
    -- one tenant's usage that could not be priced.
    last_gap as materialized (
        select g.tenant_id, g.last
        from budgetd_status_gaps(earliest_start, until, lookback_seconds) g
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
        select budgetd_budget_forecast(b.spent, b.trailing, until, b.trailing_start,
                                       b.period_end::timestamp at time zone 'UTC') as forecast
    ) f;
end
$$;
