-- Compact, month-partitioned ledger entries.
--
-- One entry per tenant, meter and window is 23 M rows a day at 10,000 tenants x 8 meters, so a
-- row holds only what cannot be derived (327 bytes per entry before, with indexes):
--
--   window_start    the partition key; partitions are UTC months `ledger_entries_pYYYYMM`,
--                   created ahead by the daemon and on demand by the write path
--                   (`budgetd_ensure_ledger_partition`), so none is missing at a month boundary;
--   window_key      ledger_windows.window_key: the window's length (its end is derived);
--   tenant_key      tenants.tenant_key (the text id stays in tenants);
--   meter_key       ledger_meters.meter_key (the name);
--   unit_key        ledger_units.unit_key (unit, price unit, units per price unit);
--   seq             2 x revision for a usage entry, 2 x revision + 1 for its reversal: the
--                   entries of one key in the order they are written, so the latest entry of a
--                   key is its highest seq and the key is live when that seq is even;
--   price_version   the price-book version that priced it; rate and currency come from
--                   price_book_rates / price_book_versions by join;
--   source_key      ledger_sources.source_key (collector, backfill, ...);
--   quantity, amount.
--
-- The reason of a correction is kept beside (ledger_entry_reasons), and the time of recording
-- is not kept (collector_runs and the audit log say when windows were committed).
--
-- Invariants, all enforced here as well as in the `ledger` crate:
--   * entries are never updated, deleted or truncated (statement triggers on the table and on
--     every partition; only `budgetd archive` detaches and drops a month's partition, after a
--     verified copy);
--   * one row per (window_start, tenant, meter, seq): the primary key; the revision chain is
--     checked at commit (a usage entry after the first follows the reversal of the one before,
--     a reversal exactly negates its usage entry);
--   * every entry is priced by exactly its version's rate: a statement trigger checks each
--     inserted row against price_book_rates (the rate exists, amount = quantity x rate per price
--     unit to 12 places) and takes a key-share lock on the rates it used, so a concurrent
--     withdrawal of the version waits and then sees the entries;
--   * a price-book version that priced an entry is immutable (the existing triggers; a BRIN
--     index on price_version keeps their lookup cheap).

-- Small keys ------------------------------------------------------------------------------------

alter table tenants add column tenant_key integer generated always as identity;
alter table tenants add constraint tenants_tenant_key_key unique (tenant_key);

create table ledger_meters (
    meter_key smallint generated always as identity primary key,
    name      text not null unique check (name ~ '^[a-z][a-z0-9_]{0,62}$')
);

create table ledger_units (
    unit_key             smallint generated always as identity primary key,
    unit                 text not null check (unit ~ '^[a-z][a-z0-9_]{0,62}$'),
    price_unit           text not null check (price_unit ~ '^[a-z][a-z0-9_]{0,62}$'),
    units_per_price_unit numeric not null check (units_per_price_unit > 0),
    unique (unit, price_unit, units_per_price_unit)
);

create table ledger_sources (
    source_key smallint generated always as identity primary key,
    name       text not null unique check (length(name) between 1 and 64)
);

create table ledger_windows (
    window_key smallint generated always as identity primary key,
    seconds    integer not null unique check (seconds between 1 and 31622400)
);

create trigger ledger_meters_immutable before update or delete on ledger_meters
    for each statement execute function budgetd_forbid_mutation();
create trigger ledger_units_immutable before update or delete on ledger_units
    for each statement execute function budgetd_forbid_mutation();
create trigger ledger_sources_immutable before update or delete on ledger_sources
    for each statement execute function budgetd_forbid_mutation();
create trigger ledger_windows_immutable before update or delete on ledger_windows
    for each statement execute function budgetd_forbid_mutation();

-- The key of a name, made on first use. Keys are never reused or changed.
create function budgetd_meter_key(meter text) returns smallint
language plpgsql as $$
declare
    key smallint;
begin
    select m.meter_key into key from ledger_meters m where m.name = meter;
    if not found then
        insert into ledger_meters (name) values (meter) on conflict (name) do nothing;
        select m.meter_key into key from ledger_meters m where m.name = meter;
    end if;
    return key;
end
$$;

create function budgetd_unit_key(unit text, price_unit text, units_per_price_unit numeric)
returns smallint
language plpgsql as $$
declare
    key smallint;
begin
    select u.unit_key into key from ledger_units u
    where u.unit = $1 and u.price_unit = $2 and u.units_per_price_unit = $3;
    if not found then
        insert into ledger_units (unit, price_unit, units_per_price_unit) values ($1, $2, $3)
            on conflict do nothing;
        select u.unit_key into key from ledger_units u
        where u.unit = $1 and u.price_unit = $2 and u.units_per_price_unit = $3;
    end if;
    return key;
end
$$;

create function budgetd_source_key(source text) returns smallint
language plpgsql as $$
declare
    key smallint;
begin
    select s.source_key into key from ledger_sources s where s.name = source;
    if not found then
        insert into ledger_sources (name) values (source) on conflict (name) do nothing;
        select s.source_key into key from ledger_sources s where s.name = source;
    end if;
    return key;
end
$$;

create function budgetd_window_key(seconds integer) returns smallint
language plpgsql as $$
declare
    key smallint;
begin
    select w.window_key into key from ledger_windows w where w.seconds = $1;
    if not found then
        insert into ledger_windows (seconds) values ($1) on conflict do nothing;
        select w.window_key into key from ledger_windows w where w.seconds = $1;
    end if;
    return key;
end
$$;

-- Rates are referenced by (version, meter key).
alter table price_book_rates add column meter_key smallint references ledger_meters (meter_key);
-- Adding the key changes no rate: the immutability trigger is off for this one statement.
alter table price_book_rates disable trigger price_book_rates_immutable;
update price_book_rates set meter_key = budgetd_meter_key(meter);
alter table price_book_rates enable trigger price_book_rates_immutable;
alter table price_book_rates
    alter column meter_key set not null,
    add constraint price_book_rates_version_meter_key unique (version_id, meter_key);

create function budgetd_rate_meter_key() returns trigger
language plpgsql as $$
begin
    new.meter_key := budgetd_meter_key(new.meter);
    return new;
end
$$;

create trigger price_book_rates_meter_key before insert on price_book_rates
    for each row execute function budgetd_rate_meter_key();

-- Rollups -----------------------------------------------------------------------------------------

-- A rollup row is written by the statement that writes its entries, from the entries' tenant
-- keys, so its tenant exists; the per-row foreign-key checks on the first window of each day
-- (one row per tenant and meter) cost more than the entries themselves. What the keys guarded,
-- that a tenant with costs is never deleted, the retention trigger now checks.
alter table ledger_rollup_daily drop constraint ledger_rollup_daily_tenant_id_fkey;
alter table ledger_rollup_monthly drop constraint ledger_rollup_monthly_tenant_id_fkey;
alter table ledger_rollup_tenant_daily drop constraint ledger_rollup_tenant_daily_tenant_id_fkey;

create or replace function budgetd_tenant_retained() returns trigger
language plpgsql as $$
begin
    if exists (select 1 from audit_log where target_type = 'tenant' and target_id = old.id) then
        raise exception 'tenant % has audit records and is retained: tenants are never deleted', old.id
            using errcode = 'insufficient_privilege';
    end if;
    if exists (select 1 from ledger_rollup_monthly where tenant_id = old.id) then
        raise exception 'tenant % has ledger entries and is retained: tenants are never deleted', old.id
            using errcode = 'insufficient_privilege';
    end if;
    return old;
end
$$;

-- The table -------------------------------------------------------------------------------------

drop view ledger_live_entries;
alter table ledger_entries rename to ledger_entries_v1;

-- Columns in this order leave no alignment padding.
create table ledger_entries (
    window_start  timestamptz not null,
    tenant_key    integer not null,
    price_version integer not null,
    meter_key     smallint not null,
    unit_key      smallint not null,
    window_key    smallint not null,
    seq           smallint not null check (seq >= 2),
    source_key    smallint not null,
    quantity      numeric not null,
    amount        numeric not null check (scale(amount) <= 12),
    check ((seq % 2 = 0 and quantity >= 0) or (seq % 2 = 1 and quantity <= 0)),
    constraint ledger_entries_key primary key (window_start, tenant_key, meter_key, seq)
) partition by range (window_start);

create index ledger_entries_price_version_brin on ledger_entries using brin (price_version);

-- Checks the rows a statement inserted (transition table `new_entries`) in one pass.
create function budgetd_check_entries_priced() returns trigger
language plpgsql as $$
declare
    bad record;
begin
    -- What the rows name, once per distinct value: the rates (locked), units, windows, sources
    -- and tenants exist.
    create temporary table if not exists budgetd_priced_combos (
        price_version integer, meter_key smallint, unit_key smallint, rate numeric,
        per numeric, tolerance numeric
    ) on commit drop;
    truncate budgetd_priced_combos;
    insert into budgetd_priced_combos
    select c.price_version, c.meter_key, c.unit_key, r.rate, u.units_per_price_unit,
           u.units_per_price_unit * 0.000000000001
    from (select distinct n.price_version, n.meter_key, n.unit_key from new_entries n) c
    left join price_book_rates r on r.version_id = c.price_version and r.meter_key = c.meter_key
    left join ledger_units u on u.unit_key = c.unit_key;
    perform 1 from price_book_rates r
    join budgetd_priced_combos c on r.version_id = c.price_version and r.meter_key = c.meter_key
    order by r.version_id, r.meter_key
    for key share of r;
    select c.price_version, c.meter_key, c.unit_key, c.rate, c.per into bad
    from budgetd_priced_combos c where c.rate is null or c.per is null limit 1;
    if found then
        if bad.rate is null then
            raise exception 'ledger entries name no rate of meter key % in price-book version %',
                bad.meter_key, bad.price_version using errcode = 'foreign_key_violation';
        end if;
        raise exception 'ledger entries name the unknown unit key %', bad.unit_key
            using errcode = 'foreign_key_violation';
    end if;
    select x.what, x.key into bad
    from (select 'tenant' as what, k.tenant_key::integer as key
          from (select distinct tenant_key from new_entries) k
          where not exists (select 1 from tenants t where t.tenant_key = k.tenant_key)
          union all
          select 'window length', k.window_key
          from (select distinct window_key from new_entries) k
          where not exists (select 1 from ledger_windows w where w.window_key = k.window_key)
          union all
          select 'source', k.source_key
          from (select distinct source_key from new_entries) k
          where not exists (select 1 from ledger_sources s where s.source_key = k.source_key)) x
    limit 1;
    if found then
        raise exception 'ledger entries name the unknown % key %', bad.what, bad.key
            using errcode = 'foreign_key_violation';
    end if;
    -- Every row: amount = quantity x rate per price unit, to 12 places.
    select n.window_start, n.tenant_key, n.meter_key, n.quantity, n.amount, c.rate, c.per
    into bad
    from new_entries n
    join budgetd_priced_combos c using (price_version, meter_key, unit_key)
    where abs(n.amount * c.per - n.quantity * c.rate) > c.tolerance
    limit 1;
    if found then
        raise exception 'ledger entry (window %, tenant key %, meter key %): amount % is not quantity % x rate % per % units',
            bad.window_start, bad.tenant_key, bad.meter_key, bad.amount, bad.quantity, bad.rate,
            bad.per
            using errcode = 'check_violation';
    end if;
    return null;
end
$$;

-- Revision chain: checked at commit, so a reversal and its replacement can be written together.
-- First writes (seq 2, the common case) do not run it at all.
create function budgetd_check_entry_chain() returns trigger
language plpgsql as $$
begin
    if new.seq % 2 = 1 then
        if not exists (
            select 1 from ledger_entries u
            where u.window_start = new.window_start and u.tenant_key = new.tenant_key
              and u.meter_key = new.meter_key and u.seq = new.seq - 1
              and u.quantity = -new.quantity and u.amount = -new.amount
              and u.unit_key = new.unit_key and u.price_version = new.price_version
              and u.window_key = new.window_key
        ) then
            raise exception 'reversal of revision % (window %, tenant key %, meter key %) does not exactly negate its usage entry',
                new.seq / 2, new.window_start, new.tenant_key, new.meter_key
                using errcode = 'integrity_constraint_violation';
        end if;
    elsif not exists (
            select 1 from ledger_entries r
            where r.window_start = new.window_start and r.tenant_key = new.tenant_key
              and r.meter_key = new.meter_key and r.seq = new.seq - 1
        ) then
        raise exception 'usage entry at revision % (window %, tenant key %, meter key %) follows no reversal of revision %',
            new.seq / 2, new.window_start, new.tenant_key, new.meter_key, new.seq / 2 - 1
            using errcode = 'integrity_constraint_violation';
    end if;
    return null;
end
$$;

-- Statement triggers are not inherited by partitions, so each partition gets its own.
create function budgetd_ledger_partition_triggers(partition regclass) returns void
language plpgsql as $$
begin
    execute format('create trigger ledger_entries_append_only before update or delete on %s
                        for each statement execute function budgetd_forbid_mutation()', partition);
    execute format('create trigger ledger_entries_no_truncate before truncate on %s
                        for each statement execute function budgetd_forbid_mutation()', partition);
    execute format('create trigger ledger_entries_priced after insert on %s
                        referencing new table as new_entries
                        for each statement execute function budgetd_check_entries_priced()',
                   partition);
end
$$;

-- Creates the partition of `month` (its first day) unless it exists; true if it created it.
-- A writer that loses the race to create it waits for the winner's commit and returns false.
create function budgetd_ensure_ledger_partition(month date) returns boolean
language plpgsql as $$
declare
    name text := format('ledger_entries_p%s', to_char(month, 'YYYYMM'));
    from_ts timestamptz := month::timestamp at time zone 'UTC';
begin
    if month is null or month <> date_trunc('month', month)::date then
        raise exception 'a ledger partition starts on the first day of a month, not %', month
            using errcode = 'invalid_parameter_value';
    end if;
    if to_regclass(name) is not null then
        return false;
    end if;
    begin
        execute format('create table %I partition of ledger_entries for values from (%L) to (%L)',
                       name, from_ts, (month + interval '1 month')::timestamp at time zone 'UTC');
    exception when duplicate_table or unique_violation then
        return false;
    end;
    perform budgetd_ledger_partition_triggers(name::regclass);
    return true;
end
$$;

-- Moving the entries ----------------------------------------------------------------------------

create trigger ledger_entries_append_only before update or delete on ledger_entries
    for each statement execute function budgetd_forbid_mutation();
create trigger ledger_entries_no_truncate before truncate on ledger_entries
    for each statement execute function budgetd_forbid_mutation();
create trigger ledger_entries_priced after insert on ledger_entries
    referencing new table as new_entries
    for each statement execute function budgetd_check_entries_priced();
create constraint trigger ledger_entries_chain after insert on ledger_entries
    deferrable initially deferred
    for each row when (new.seq > 2)
    execute function budgetd_check_entry_chain();

create table ledger_entry_reasons (
    window_start timestamptz not null,
    tenant_key   integer not null,
    meter_key    smallint not null,
    seq          smallint not null,
    reason       text not null,
    primary key (window_start, tenant_key, meter_key, seq)
);

create trigger ledger_entry_reasons_append_only before update or delete on ledger_entry_reasons
    for each statement execute function budgetd_forbid_mutation();

select budgetd_ensure_ledger_partition(m)
from (select distinct date_trunc('month', window_start at time zone 'UTC')::date as m
      from ledger_entries_v1) months;

select budgetd_unit_key(unit, price_unit, units_per_price_unit)
from (select distinct unit, price_unit, units_per_price_unit from ledger_entries_v1) u;
select budgetd_source_key(source) from (select distinct source from ledger_entries_v1) s;
select budgetd_meter_key(meter) from (select distinct meter from ledger_entries_v1) m;
select budgetd_window_key(seconds)
from (select distinct extract(epoch from window_end - window_start)::integer as seconds
      from ledger_entries_v1) w;

insert into ledger_entries (window_start, tenant_key, price_version, meter_key, unit_key,
                            window_key, seq, source_key, quantity, amount)
select e.window_start, t.tenant_key, e.price_version, m.meter_key, u.unit_key, w.window_key,
       2 * e.revision + case e.kind when 'reversal' then 1 else 0 end, s.source_key,
       e.quantity, e.amount
from ledger_entries_v1 e
join ledger_windows w on w.seconds = extract(epoch from e.window_end - e.window_start)::integer
join tenants t on t.id = e.tenant_id
join ledger_meters m on m.name = e.meter
join ledger_units u on u.unit = e.unit and u.price_unit = e.price_unit
                   and u.units_per_price_unit = e.units_per_price_unit
join ledger_sources s on s.name = e.source
order by 1, 2, 4, 7;

insert into ledger_entry_reasons (window_start, tenant_key, meter_key, seq, reason)
select e.window_start, t.tenant_key, m.meter_key,
       2 * e.revision + case e.kind when 'reversal' then 1 else 0 end, e.reason
from ledger_entries_v1 e
join tenants t on t.id = e.tenant_id
join ledger_meters m on m.name = e.meter
where e.reason is not null;

-- Conflicts name their key and the live revision they were compared with.
create table ledger_conflicts_v2 (
    id                      bigint generated always as identity primary key,
    tenant_id               text not null references tenants (id),
    meter                   text not null,
    window_start            timestamptz not null,
    window_end              timestamptz not null,
    live_revision           integer not null,
    attempted_quantity      numeric not null,
    attempted_unit          text not null,
    attempted_price_version bigint not null,
    attempted_amount        numeric not null,
    source                  text not null,
    detected_at             timestamptz not null default now(),
    unique (tenant_id, meter, window_start, live_revision, attempted_quantity, attempted_unit,
            attempted_price_version)
);

insert into ledger_conflicts_v2 (tenant_id, meter, window_start, window_end, live_revision,
                                 attempted_quantity, attempted_unit, attempted_price_version,
                                 attempted_amount, source, detected_at)
select e.tenant_id, e.meter, e.window_start, e.window_end, e.revision, c.attempted_quantity,
       c.attempted_unit, c.attempted_price_version, c.attempted_amount, c.source, c.detected_at
from ledger_conflicts c
join ledger_entries_v1 e on e.id = c.entry_id
order by c.id;

drop table ledger_conflicts;
alter table ledger_conflicts_v2 rename to ledger_conflicts;
alter table ledger_conflicts rename constraint ledger_conflicts_v2_pkey to ledger_conflicts_pkey;

-- The old table's statement triggers forbid nothing that DROP does.
drop table ledger_entries_v1;

-- Readable entries ------------------------------------------------------------------------------

-- Every entry with its names, window end, revision and kind, rate, units and currency.
create view ledger_entry_details as
select t.id as tenant_id, m.name as meter, e.window_start,
       e.window_start + make_interval(secs => w.seconds) as window_end,
       (e.seq / 2)::integer as revision,
       case e.seq % 2 when 0 then 'usage' else 'reversal' end as kind,
       e.quantity, u.unit, e.price_version::bigint as price_version, r.rate, u.price_unit,
       u.units_per_price_unit, e.amount, v.currency, s.name as source, x.reason
from ledger_entries e
join tenants t on t.tenant_key = e.tenant_key
join ledger_meters m on m.meter_key = e.meter_key
join ledger_units u on u.unit_key = e.unit_key
join ledger_windows w on w.window_key = e.window_key
join price_book_rates r on r.version_id = e.price_version and r.meter_key = e.meter_key
join price_book_versions v on v.id = e.price_version
join ledger_sources s on s.source_key = e.source_key
left join ledger_entry_reasons x on x.window_start = e.window_start
    and x.tenant_key = e.tenant_key and x.meter_key = e.meter_key and x.seq = e.seq;

-- The live entry of each key: its latest entry, when that is a usage entry.
create view ledger_live_entries as
select t.id as tenant_id, m.name as meter, e.window_start,
       e.window_start + make_interval(secs => w.seconds) as window_end,
       (e.seq / 2)::integer as revision, e.quantity, u.unit,
       e.price_version::bigint as price_version, r.rate, u.price_unit, u.units_per_price_unit,
       e.amount, v.currency, s.name as source
from ledger_entries e
join tenants t on t.tenant_key = e.tenant_key
join ledger_meters m on m.meter_key = e.meter_key
join ledger_units u on u.unit_key = e.unit_key
join ledger_windows w on w.window_key = e.window_key
join price_book_rates r on r.version_id = e.price_version and r.meter_key = e.meter_key
join price_book_versions v on v.id = e.price_version
join ledger_sources s on s.source_key = e.source_key
where e.seq % 2 = 0
  and not exists (
      select 1 from ledger_entries l
      where l.window_start = e.window_start and l.tenant_key = e.tenant_key
        and l.meter_key = e.meter_key and l.seq > e.seq
  );
