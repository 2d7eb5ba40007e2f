-- The daily rollup keyed by the ledger's small keys (issue 13: the write path within reach of
-- COPY).
--
-- Every entry the write path inserts adds to one row of the daily rollup (tenant, day, meter,
-- unit, currency, price unit): at 10,000 tenants × 8 meters, 80,000 upserts per window, the
-- largest part of a write. Keyed by text (tenant id, meter, unit, price unit, units per price
-- unit) each upsert compared up to seven text and numeric columns per index level and the write
-- statement joined every entry to its names first; keyed by the entries' own small keys an
-- upsert costs about half, and names are joined only when the rollup is read.
--
--   * `ledger_rollup_days` holds the rows: (tenant_key, day, meter_key, unit_key, currency),
--     tenant first, so one tenant's days are one index range (the Grafana folders and
--     `report costs --tenant` read that way);
--   * `ledger_rollup_daily` becomes a view of the same columns in the same order, with the
--     names joined in: every reader (finance.tenant_costs_daily, the cost reports) reads it as
--     before;
--   * the rows are moved, each to the keys its names have (made if missing, as the write path
--     makes them), and the migration fails rather than lose one.
--
-- The monthly and per-tenant daily rollups stay keyed by tenant id (one row per tenant and
-- month or day, read by the budget status): the write statement now sums the entries per
-- tenant key first and names the tenant once per row it writes, not once per entry.

create table ledger_rollup_days (
    tenant_key integer not null,
    day        date not null,
    meter_key  smallint not null,
    unit_key   smallint not null,
    currency   char(3) not null,
    quantity   numeric not null,
    amount     numeric not null,
    entries    bigint not null,
    primary key (tenant_key, day, meter_key, unit_key, currency)
) with (fillfactor = 50); -- room for in-page (HOT) updates: every write updates its rollup row

lock table ledger_rollup_daily in exclusive mode;

insert into ledger_rollup_days (tenant_key, day, meter_key, unit_key, currency, quantity,
                                amount, entries)
select t.tenant_key, r.day, budgetd_meter_key(r.meter),
       budgetd_unit_key(r.unit, r.price_unit, r.units_per_price_unit), r.currency, r.quantity,
       r.amount, r.entries
from ledger_rollup_daily r
join tenants t on t.id = r.tenant_id
order by 1, 2, 3, 4, 5;

do $$
declare
    moved bigint := (select count(*) from ledger_rollup_days);
    rows bigint := (select count(*) from ledger_rollup_daily);
begin
    if moved <> rows then
        raise exception 'moving the daily rollup to small keys kept % of % rows (a row names a tenant that does not exist)',
            moved, rows;
    end if;
end
$$;

alter table ledger_rollup_daily rename to ledger_rollup_daily_text;

create view ledger_rollup_daily as
select t.id as tenant_id, d.day, m.name as meter, u.unit, d.currency, d.quantity, d.amount,
       d.entries, u.price_unit, u.units_per_price_unit
from ledger_rollup_days d
join tenants t on t.tenant_key = d.tenant_key
join ledger_meters m on m.meter_key = d.meter_key
join ledger_units u on u.unit_key = d.unit_key;

-- The same definition, now bound to the view above.
create or replace view finance.tenant_costs_daily as
select tenant_id, day, meter, quantity, unit, amount, currency::text as currency,
       budgetd_priced_quantity(quantity, units_per_price_unit) as priced_quantity, price_unit
from ledger_rollup_daily;

drop table ledger_rollup_daily_text;
