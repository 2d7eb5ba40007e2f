-- Finance reads quantities in the unit they are priced in (core-hours, GiB-hours, GiB), and
-- unallocated usage with what it would cost.
--
--   * `budgetd_priced_quantity`: a quantity in its meter's price unit, the one definition the
--     views and the cost reports use;
--   * the daily rollup is also keyed by the price unit and units per price unit its entries
--     recorded, so a day's quantity converts exactly even if a meter's price unit changed that
--     day (it then has a row per price unit);
--   * unallocated usage records, like entries, the price-book version in force at its window's
--     start and its meter's price unit; the view prices it from the version's rate;
--   * `finance.tenant_costs_daily` gains `priced_quantity`, `price_unit`;
--     `finance.unallocated_daily` gains `key_kind`, `priced_quantity`, `price_unit`, `amount`,
--     `currency`. Columns are only ever appended: the views are a contract with finance.

-- quantity ÷ units per price unit, to 12 decimal places (far below any price's resolution; a
-- core-second is 0.000277777778 core-hours), without trailing zeros. Exact NUMERIC throughout.
create function budgetd_priced_quantity(quantity numeric, units_per_price_unit numeric)
returns numeric
language sql immutable strict parallel safe as $$
    select trim_scale(round(quantity / units_per_price_unit, 12))
$$;

-- Daily rollups by price unit ---------------------------------------------------------------

alter table ledger_rollup_daily
    add column price_unit text,
    add column units_per_price_unit numeric,
    drop constraint ledger_rollup_daily_pkey;

-- The rollup is the sum of its entries, so it is rebuilt from them with the new key. Every entry
-- is still in ledger_entries (no month has been archived yet); the statement above locked the
-- rollup, and the statements that write entries write it too, so none is written in between.
delete from ledger_rollup_daily;
insert into ledger_rollup_daily (tenant_id, day, meter, unit, currency, price_unit,
                                 units_per_price_unit, quantity, amount, entries)
select tenant_id, (window_start at time zone 'UTC')::date, meter, unit, currency, price_unit,
       units_per_price_unit, sum(quantity), sum(amount), count(*)
from ledger_entries
group by 1, 2, 3, 4, 5, 6, 7
order by 1, 2, 3, 4, 5, 6, 7;

alter table ledger_rollup_daily
    alter column price_unit set not null,
    alter column units_per_price_unit set not null,
    add check (units_per_price_unit > 0),
    add primary key (tenant_id, day, meter, unit, currency, price_unit, units_per_price_unit);

create or replace view finance.tenant_costs_daily as
select tenant_id, day, meter, quantity, unit, amount, currency::text as currency,
       budgetd_priced_quantity(quantity, units_per_price_unit) as priced_quantity, price_unit
from ledger_rollup_daily;

-- Unallocated usage, priced ------------------------------------------------------------------

-- Null only in rows collected before this migration that it could not complete (below).
alter table unallocated_usage
    add column price_version bigint references price_book_versions (id),
    add column price_unit text check (price_unit ~ '^[a-z][a-z0-9_]{0,62}$'),
    add column units_per_price_unit numeric check (units_per_price_unit > 0);

-- Rows collected before: the version in force at the window's start (the one that priced the
-- window's entries, unless a backdated version came later), and the price unit that the
-- tenants' entries of the meter and unit recorded that day, or ever if there was only one.
with day_units as (
    select day, meter, unit, min(price_unit) as price_unit,
           min(units_per_price_unit) as units_per_price_unit
    from ledger_rollup_daily
    group by 1, 2, 3
    having count(distinct (price_unit, units_per_price_unit)) = 1
),
meter_units as (
    select meter, unit, min(price_unit) as price_unit,
           min(units_per_price_unit) as units_per_price_unit
    from ledger_rollup_daily
    group by 1, 2
    having count(distinct (price_unit, units_per_price_unit)) = 1
)
update unallocated_usage u
set price_version = (select v.id from price_book_versions v
                     where v.valid_from <= u.window_start
                     order by v.valid_from desc limit 1),
    (price_unit, units_per_price_unit) = (
        select k.price_unit, k.units_per_price_unit
        from (select d.price_unit, d.units_per_price_unit, 1 as preference
              from day_units d
              where d.day = (u.window_start at time zone 'UTC')::date
                and d.meter = u.meter and d.unit = u.unit
              union all
              select m.price_unit, m.units_per_price_unit, 2
              from meter_units m
              where m.meter = u.meter and m.unit = u.unit) k
        order by k.preference
        limit 1);

-- Every row collected from now on records all three (old rows may lack them, above).
alter table unallocated_usage
    add constraint unallocated_usage_priced
    check (price_version is not null and price_unit is not null
           and units_per_price_unit is not null) not valid;

-- Per UTC day, key (a namespace without a tenant label, or a tenant label value that names no
-- known tenant), meter, price unit and currency:
--   key_kind         'namespace' or 'label_value': what `namespace_or_label` holds;
--   priced_quantity  quantity in `price_unit`, as in tenant_costs_daily;
--   amount           what the usage would have cost at the rate of the price-book version in
--                    force at each window's start (the version that priced the window's
--                    entries), rounded once to 12 places; NULL, not zero, when that version has
--                    no rate for the meter in one of the day's windows (or, for rows collected
--                    before this view priced them, the price unit is unknown);
--   currency         that version's currency.
-- Until this migration the view merged a namespace and a label value of the same name; it now
-- keeps them apart.
create or replace view finance.unallocated_daily as
select (u.window_start at time zone 'UTC')::date as day, u.namespace_or_label, u.meter,
       sum(u.quantity) as quantity, u.unit,
       case u.reason when 'no_tenant_label' then 'namespace' else 'label_value' end as key_kind,
       budgetd_priced_quantity(sum(u.quantity), u.units_per_price_unit) as priced_quantity,
       u.price_unit,
       case when bool_and(r.rate is not null)
            then trim_scale(round(sum(u.quantity * r.rate) / u.units_per_price_unit, 12))
       end as amount,
       v.currency::text as currency
from unallocated_usage u
left join price_book_versions v on v.id = u.price_version
left join price_book_rates r on r.version_id = u.price_version and r.meter = u.meter
group by 1, u.namespace_or_label, u.meter, u.unit, u.reason, u.price_unit,
         u.units_per_price_unit, v.currency;
