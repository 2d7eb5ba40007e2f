-- Usage that could not be priced, per key; one currency for the whole ledger.
--
--   * `unpriced_usage`: a tenant's usage of a meter in a window that the price book could not
--     price (no version in force, no rate for the meter, or quantity × rate out of the range the
--     ledger prices exactly). The collector records it with its quantity and commits the rest of
--     the window, so one key never holds back the watermark or other tenants; it prices the
--     usage from this record once the price book can (a withdrawn or replaced version, a version
--     with the missing rate), and sets `resolved_at` in the same transaction as the entry. A
--     recollection of the window resolves it too. `price_version` is the version that failed,
--     without a foreign key: a withdrawn version's failures stay on record.
--   * the budget status counts open unpriced usage like an incomplete window of the tenant:
--     its spend lacks that usage.
--   * one currency: every budget and every price-book version are in the same currency, so
--     spend and budgets can always be compared. Checked by the store, and here, under the
--     advisory lock the store takes first ("budgetdC"), so concurrent writers cannot both pass.

create table unpriced_usage (
    tenant_id            text not null references tenants (id),
    meter                text not null check (meter ~ '^[a-z][a-z0-9_]{0,62}$'),
    window_start         timestamptz not null,
    window_end           timestamptz not null,
    quantity             numeric not null check (quantity >= 0),
    unit                 text not null check (unit ~ '^[a-z][a-z0-9_]{0,62}$'),
    price_unit           text not null check (price_unit ~ '^[a-z][a-z0-9_]{0,62}$'),
    units_per_price_unit numeric not null check (units_per_price_unit > 0),
    failure              text not null check (failure in ('no_version', 'no_rate', 'out_of_range')),
    price_version        bigint,
    message              text not null,
    correction_reason    text,
    detected_at          timestamptz not null,
    resolved_at          timestamptz,
    primary key (tenant_id, meter, window_start, window_end),
    check (window_end > window_start),
    check ((failure = 'no_version') = (price_version is null))
);

create index unpriced_usage_open on unpriced_usage (window_start) where resolved_at is null;

-- Withdrawing or replacing a version ------------------------------------------------------

-- A version that priced nothing may be withdrawn; unallocated usage that recorded it moves to
-- the version in force without it, in the same transaction. Checked at commit when the store
-- asks, so that a replacement may take the withdrawn version's `valid_from` first.
alter table unallocated_usage
    alter constraint unallocated_usage_price_version_fkey deferrable initially immediate;

-- One currency -----------------------------------------------------------------------------

create function budgetd_one_currency() returns trigger
language plpgsql as $$
declare
    offending text;
begin
    -- The store's lock ("budgetdC"): writers of budgets and versions check one after another.
    perform pg_advisory_xact_lock(7094687183238620227);
    select n.currency into offending
    from (select distinct i.currency from inserted i) n
    where exists (select 1 from price_book_versions v where v.currency <> n.currency)
       or exists (select 1 from budgets b where b.currency <> n.currency)
    limit 1;
    if found then
        raise exception 'the ledger keeps one currency: % differs from a price-book version or a budget',
            offending using errcode = 'integrity_constraint_violation';
    end if;
    return null;
end
$$;

create trigger budgets_one_currency_insert
    after insert on budgets referencing new table as inserted
    for each statement execute function budgetd_one_currency();
create trigger budgets_one_currency_update
    after update on budgets referencing new table as inserted
    for each statement execute function budgetd_one_currency();
create trigger price_book_versions_one_currency_insert
    after insert on price_book_versions referencing new table as inserted
    for each statement execute function budgetd_one_currency();
create trigger price_book_versions_one_currency_update
    after update on price_book_versions referencing new table as inserted
    for each statement execute function budgetd_one_currency();

-- Budget status: open unpriced usage makes a tenant's data incomplete ----------------------

-- As in ..._enforcement.sql, with the `gaps` of unpriced usage added.
create or replace function budgetd_budget_status(as_of timestamptz, trailing_days integer,
                                      max_lag_seconds integer,
                                      lookback_seconds integer default null,
                                      only_tenant text default null)
returns table (tenant_id text, tenant_state text, period text, period_start date,
               period_end date, budget_amount numeric, currency text, thresholds integer[],
               spent_amount numeric, trailing_amount numeric, trailing_start timestamptz,
               data_until timestamptz, forecast_amount numeric, complete boolean, state text)
language sql stable security definer
set search_path = public, pg_temp set timezone = 'UTC' set jit = off
set enable_nestloop = off set enable_sort = off set max_parallel_workers_per_gather = 0 as $$
with watermark as materialized (
    select least(as_of, coalesce((select w.window_end from collector_watermark w),
                                 '-infinity'::timestamptz)) as data_until,
           coalesce((select w.window_end from collector_watermark w), '-infinity'::timestamptz)
               >= as_of - make_interval(secs => max_lag_seconds) as fresh
),
current_budget as materialized (
    select distinct on (b.tenant_id) b.tenant_id, b.amount, b.currency, b.period, b.thresholds
    from budgets b
    where b.effective_from <= as_of and (only_tenant is null or b.tenant_id = only_tenant)
    -- descending, so a backward scan of unique (tenant_id, effective_from) serves it unsorted
    order by b.tenant_id desc, b.effective_from desc
),
bounded as materialized (
    select b.*, p.period_start,
           (p.period_start + case b.period when 'monthly' then interval '1 month'
                                           when 'quarterly' then interval '3 months'
                                           else interval '1 year' end)::date as period_end,
           w.data_until, w.fresh,
           greatest(p.period_start::timestamp,
                    date_trunc('day', w.data_until at time zone 'UTC')
                        - make_interval(days => trailing_days)) at time zone 'UTC' as trailing_start
    from current_budget b
    cross join watermark w
    cross join (
        select date_trunc('month', as_of at time zone 'UTC')::date as month_start,
               date_trunc('quarter', as_of at time zone 'UTC')::date as quarter_start,
               date_trunc('year', as_of at time zone 'UTC')::date as year_start
    ) starts
    cross join lateral (
        select case b.period when 'monthly' then starts.month_start
                             when 'quarterly' then starts.quarter_start
                             else starts.year_start end as period_start
    ) p
),
spent as materialized (
    select b.tenant_id, sum(m.amount) as amount
    from bounded b
    join ledger_rollup_monthly m
      on m.tenant_id = b.tenant_id and m.currency = b.currency
     and m.month >= b.period_start and m.month < b.period_end
    where m.month >= (select min(period_start) from bounded)
    group by b.tenant_id
),
-- Each tenant's trailing window starts at the later of the common start (`trailing_days` whole
-- days before the day of the last data) and its period's start: one pass over the recent
-- per-tenant daily rows sums from each possible period start (month, quarter, year).
trailing_spend as materialized (
    select t.tenant_id, t.currency,
           t.total - coalesce(t.before_month, 0) as monthly,
           t.total - coalesce(t.before_quarter, 0) as quarterly,
           t.total - coalesce(t.before_year, 0) as yearly
    from (
        -- One addition per row: the "before" sums only see days before a period start, which
        -- the common window reaches in a period's first `trailing_days` days only.
        select d.tenant_id, d.currency, sum(d.amount) as total,
               sum(d.amount) filter (where d.day < date_trunc('month', as_of at time zone 'UTC')::date)
                   as before_month,
               sum(d.amount) filter (where d.day < date_trunc('quarter', as_of at time zone 'UTC')::date)
                   as before_quarter,
               sum(d.amount) filter (where d.day < date_trunc('year', as_of at time zone 'UTC')::date)
                   as before_year
        from ledger_rollup_tenant_daily d
        where d.day >= (select (date_trunc('day', w.data_until at time zone 'UTC')
                                - make_interval(days => trailing_days))::date
                        from watermark w)
          and (only_tenant is null or d.tenant_id = only_tenant)
        group by d.tenant_id, d.currency
    ) t
),
-- Incomplete windows that count: a whole window (tenant_id null), one tenant's inputs, or one
-- tenant's usage that could not be priced.
gaps as materialized (
    select cw.window_start, t.tenant_id
    from collected_windows cw
    cross join watermark w
    cross join lateral (
        select null::text as tenant_id where not cw.complete
        union all
        select u from unnest(cw.incomplete_tenants) u where cw.complete
    ) t
    where cw.window_start >= (select min(period_start) from bounded)::timestamp at time zone 'UTC'
      and cw.window_start < w.data_until
      and (lookback_seconds is null
           or cw.window_end > w.data_until - make_interval(secs => lookback_seconds))
      and (not cw.complete or cardinality(cw.incomplete_tenants) > 0)
    union all
    -- A tenant's usage that could not be priced yet is missing from its spend, as its inputs
    -- would be: the same window rules apply.
    select u.window_start, u.tenant_id
    from unpriced_usage u
    cross join watermark w
    where u.resolved_at is null
      and u.window_start >= (select min(period_start) from bounded)::timestamp at time zone 'UTC'
      and u.window_start < w.data_until
      and (lookback_seconds is null
           or u.window_end > w.data_until - make_interval(secs => lookback_seconds))
),
last_gap as materialized (
    select g.tenant_id, max(g.window_start) as last from gaps g group by g.tenant_id
)
select b.tenant_id, t.state, b.period, b.period_start, b.period_end, b.amount,
       b.currency::text, b.thresholds, coalesce(s.amount, 0), f.trailing,
       b.trailing_start, b.data_until, f.forecast,
       b.fresh
         and coalesce((select g.last from last_gap g where g.tenant_id is null), '-infinity')
             < b.period_start::timestamp at time zone 'UTC'
         and coalesce(tg.last, '-infinity') < b.period_start::timestamp at time zone 'UTC',
       case when f.spent >= b.amount and (f.spent > 0 or b.amount = 0) then 'exceeded'
            when f.forecast >= b.amount and f.forecast > 0 then 'at_risk'
            when f.spent * 100 >= b.amount * b.thresholds[1] and f.spent > 0 then 'warning'
            else 'ok' end
from bounded b
join tenants t on t.id = b.tenant_id
left join spent s on s.tenant_id = b.tenant_id
left join trailing_spend tr on tr.tenant_id = b.tenant_id and tr.currency = b.currency
left join last_gap tg on tg.tenant_id = b.tenant_id
cross join lateral (
    select case b.period when 'monthly' then tr.monthly
                         when 'quarterly' then tr.quarterly
                         else tr.yearly end as raw_trailing
) rt
cross join lateral (
    select coalesce(s.amount, 0) as spent, coalesce(rt.raw_trailing, 0) as trailing,
           case
               when b.data_until <= b.trailing_start
                 or b.data_until >= b.period_end::timestamp at time zone 'UTC'
                   then coalesce(s.amount, 0)
               else coalesce(s.amount, 0) + round(coalesce(rt.raw_trailing, 0)
                    * extract(epoch from (b.period_end::timestamp at time zone 'UTC' - b.data_until))
                    / extract(epoch from (b.data_until - b.trailing_start)), 6)
           end as forecast
) f
$$;
