-- The finance contract: views that finance's SQL and the Grafana dashboards rely on, and the
-- read-only role `budgetd_finance` that can read them and nothing else.

-- Monthly rollups keep the monthly view and budget status fast however large the ledger grows;
-- like the daily ones they are maintained in the same statement as the entries.
create table ledger_rollup_monthly (
    tenant_id text not null references tenants (id),
    month     date not null check (extract(day from month) = 1),
    currency  char(3) not null,
    amount    numeric not null,
    entries   bigint not null,
    primary key (month, tenant_id, currency)
) with (fillfactor = 50);

create schema finance;

create view finance.tenant_costs_daily as
select tenant_id, day, meter, quantity, unit, amount, currency::text as currency
from ledger_rollup_daily;

create view finance.tenant_costs_monthly as
select tenant_id, month, amount, currency::text as currency
from ledger_rollup_monthly;

-- Period bounds are calendar-aligned in UTC. Spent counts the ledger amounts in the budget's
-- currency within the current period.
create view finance.budget_status as
with current_budget as (
    select distinct on (tenant_id) tenant_id, amount, currency, period
    from budgets
    where effective_from <= now()
    order by tenant_id, effective_from desc
),
bounded as (
    select b.tenant_id, b.amount, b.currency, p.period_start,
           (p.period_start + case b.period
                when 'monthly' then interval '1 month'
                when 'quarterly' then interval '3 months'
                else interval '1 year' end)::date as period_end
    from current_budget b
    cross join lateral (
        select date_trunc(case b.period when 'monthly' then 'month'
                                        when 'quarterly' then 'quarter'
                                        else 'year' end,
                          now() at time zone 'UTC')::date as period_start
    ) p
)
select b.tenant_id, b.period_start, b.period_end, b.amount as budget_amount,
       coalesce((select sum(m.amount) from ledger_rollup_monthly m
                 where m.tenant_id = b.tenant_id and m.currency = b.currency
                   and m.month >= b.period_start and m.month < b.period_end), 0) as spent_amount,
       b.currency::text as currency
from bounded b;

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'budgetd_finance') then
        create role budgetd_finance nologin;
    end if;
end
$$;

grant usage on schema finance to budgetd_finance;
grant select on finance.tenant_costs_daily, finance.tenant_costs_monthly, finance.budget_status
    to budgetd_finance;
