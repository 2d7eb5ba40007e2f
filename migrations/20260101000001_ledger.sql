-- The budgetd ledger: tenants, price book, immutable ledger entries with their daily rollups,
-- budgets, the hash-chained audit log and the event outbox.
--
-- Invariants are enforced here as well as in the `ledger` crate:
--   * ledger entries are never updated or deleted (trigger);
--   * at most one live entry per (tenant, meter, window): revisions are unique per key and kind,
--     a usage entry at revision n > 1 needs the reversal of revision n - 1, and a reversal
--     exactly negates the usage entry of its revision (deferred constraint trigger);
--   * an entry is priced from the price book: (version, meter, rate, currency) references it;
--   * a price-book version that priced an entry is immutable.

create function budgetd_forbid_mutation() returns trigger
language plpgsql as $$
begin
    raise exception '% is append-only: % is not allowed', tg_table_name, tg_op
        using errcode = 'insufficient_privilege';
end
$$;

-- Tenants -------------------------------------------------------------------------------------

create table tenants (
    id               text primary key
                     check (length(id) between 1 and 63 and id ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'),
    display_name     text not null check (length(display_name) between 1 and 256),
    owner            text not null check (length(owner) between 1 and 256),
    data_residency   text not null check (data_residency ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'),
    labels           jsonb not null default '{}' check (jsonb_typeof(labels) = 'object'),
    state            text not null
                     check (state in ('requested', 'active', 'suspended', 'offboarding', 'offboarded')),
    created_at       timestamptz not null,
    updated_at       timestamptz not null,
    state_changed_at timestamptz not null
);

-- Price book ----------------------------------------------------------------------------------

create table price_book_versions (
    id         bigint generated always as identity primary key,
    valid_from timestamptz not null unique,
    currency   char(3) not null check (currency ~ '^[A-Z]{3}$'),
    created_at timestamptz not null,
    created_by text not null,
    unique (id, currency)
);

create table price_book_rates (
    version_id bigint not null,
    meter      text not null check (meter ~ '^[a-z][a-z0-9_]{0,62}$'),
    rate       numeric not null check (rate >= 0),
    currency   char(3) not null,
    primary key (version_id, meter),
    -- the target of ledger_entries' pricing reference
    unique (version_id, meter, rate, currency),
    foreign key (version_id, currency) references price_book_versions (id, currency)
);

create function budgetd_price_version_immutable() returns trigger
language plpgsql as $$
declare
    version bigint;
begin
    if tg_table_name = 'price_book_versions' then
        version := old.id;
    else
        version := old.version_id;
    end if;
    if exists (select 1 from ledger_entries where price_version = version) then
        raise exception 'price-book version % has priced ledger entries and is immutable', version
            using errcode = 'integrity_constraint_violation';
    end if;
    return case when tg_op = 'DELETE' then old else new end;
end
$$;

-- Ledger entries ------------------------------------------------------------------------------

create table ledger_entries (
    id                   bigint generated always as identity primary key,
    tenant_id            text not null references tenants (id),
    meter                text not null,
    window_start         timestamptz not null,
    window_end           timestamptz not null,
    revision             integer not null check (revision >= 1),
    kind                 text not null check (kind in ('usage', 'reversal')),
    quantity             numeric not null,
    unit                 text not null check (unit ~ '^[a-z][a-z0-9_]{0,62}$'),
    price_version        bigint not null,
    rate                 numeric not null,
    price_unit           text not null check (price_unit ~ '^[a-z][a-z0-9_]{0,62}$'),
    units_per_price_unit numeric not null check (units_per_price_unit > 0),
    amount               numeric not null check (scale(amount) <= 12),
    currency             char(3) not null,
    source               text not null,
    reason               text,
    recorded_at          timestamptz not null default now(),
    check (window_end > window_start),
    check ((kind = 'usage' and quantity >= 0) or (kind = 'reversal' and quantity <= 0)),
    -- amount is quantity x rate per price unit, kept to 12 decimal places
    check (abs(amount * units_per_price_unit - quantity * rate) <= units_per_price_unit * 0.000000000001),
    unique (tenant_id, meter, window_start, window_end, revision, kind),
    foreign key (price_version, meter, rate, currency)
        references price_book_rates (version_id, meter, rate, currency)
);

create index ledger_entries_price_version on ledger_entries (price_version);

create trigger ledger_entries_append_only
    before update or delete on ledger_entries
    for each statement execute function budgetd_forbid_mutation();
create trigger ledger_entries_no_truncate
    before truncate on ledger_entries
    for each statement execute function budgetd_forbid_mutation();

create trigger price_book_versions_immutable
    before update or delete on price_book_versions
    for each row execute function budgetd_price_version_immutable();
create trigger price_book_rates_immutable
    before update or delete on price_book_rates
    for each row execute function budgetd_price_version_immutable();

-- Revision chain: checked at commit, so a reversal and its replacement can be written together.
-- First writes (revision 1 usage, the common case) do not run it at all.
create function budgetd_check_revision_chain() returns trigger
language plpgsql as $$
begin
    if new.kind = 'reversal' then
        if not exists (
            select 1 from ledger_entries u
            where u.tenant_id = new.tenant_id and u.meter = new.meter
              and u.window_start = new.window_start and u.window_end = new.window_end
              and u.revision = new.revision and u.kind = 'usage'
              and u.quantity = -new.quantity and u.amount = -new.amount
              and u.unit = new.unit and u.price_version = new.price_version
        ) then
            raise exception 'reversal % does not exactly negate a usage entry of revision %',
                new.id, new.revision using errcode = 'integrity_constraint_violation';
        end if;
    elsif not exists (
            select 1 from ledger_entries r
            where r.tenant_id = new.tenant_id and r.meter = new.meter
              and r.window_start = new.window_start and r.window_end = new.window_end
              and r.revision = new.revision - 1 and r.kind = 'reversal'
        ) then
        raise exception 'usage entry % at revision % follows no reversal of revision %',
            new.id, new.revision, new.revision - 1 using errcode = 'integrity_constraint_violation';
    end if;
    return null;
end
$$;

create constraint trigger ledger_entries_revision_chain
    after insert on ledger_entries
    deferrable initially deferred
    for each row when (new.kind = 'reversal' or new.revision > 1)
    execute function budgetd_check_revision_chain();

-- The live entry of each key: the usage entry of the highest revision, unless it was reversed.
create view ledger_live_entries as
select e.id, e.tenant_id, e.meter, e.window_start, e.window_end, e.revision, e.quantity, e.unit,
       e.price_version, e.rate, e.price_unit, e.units_per_price_unit, e.amount, e.currency,
       e.source, e.recorded_at
from ledger_entries e
where e.kind = 'usage'
  and not exists (
      select 1 from ledger_entries r
      where r.kind = 'reversal' and r.tenant_id = e.tenant_id and r.meter = e.meter
        and r.window_start = e.window_start and r.window_end = e.window_end
        and r.revision = e.revision
  );

-- A write of an existing key with a different quantity, unit or price version. The live entry
-- stays; the attempt is kept here for review.
create table ledger_conflicts (
    id                      bigint generated always as identity primary key,
    entry_id                bigint not null references ledger_entries (id),
    attempted_quantity      numeric not null,
    attempted_unit          text not null,
    attempted_price_version bigint not null,
    attempted_amount        numeric not null,
    source                  text not null,
    detected_at             timestamptz not null default now(),
    unique (entry_id, attempted_quantity, attempted_unit, attempted_price_version)
);

-- Daily rollups, maintained in the same statement as the entries they sum. A window belongs to
-- the UTC day of its start.
create table ledger_rollup_daily (
    tenant_id text not null references tenants (id),
    day       date not null,
    meter     text not null,
    unit      text not null,
    currency  char(3) not null,
    quantity  numeric not null,
    amount    numeric not null,
    entries   bigint not null,
    primary key (tenant_id, day, meter, unit, currency)
) with (fillfactor = 50); -- room for in-page (HOT) updates: every write updates its rollup row

-- Budgets -------------------------------------------------------------------------------------

create function budgetd_thresholds_valid(thresholds integer[]) returns boolean
language sql immutable as $$
    select cardinality(thresholds) between 1 and 16
       and (select bool_and(t between 1 and 1000) from unnest(thresholds) t)
       and (select coalesce(bool_and(a < b), true)
              from unnest(thresholds[1:cardinality(thresholds) - 1], thresholds[2:]) as p(a, b))
$$;

create table budgets (
    id             bigint generated always as identity primary key,
    tenant_id      text not null references tenants (id),
    amount         numeric not null check (amount >= 0),
    currency       char(3) not null check (currency ~ '^[A-Z]{3}$'),
    period         text not null check (period in ('monthly', 'quarterly', 'yearly')),
    thresholds     integer[] not null check (budgetd_thresholds_valid(thresholds)),
    effective_from timestamptz not null,
    created_at     timestamptz not null,
    created_by     text not null,
    unique (tenant_id, effective_from)
);

-- Audit log -----------------------------------------------------------------------------------

-- Append-only and hash-chained: hash = sha256(prev_hash || canonical form of the record), see
-- ledger::audit. `seq` has no gaps, so a deleted row shows as well as an altered one.
create table audit_log (
    seq         bigint primary key check (seq >= 1),
    at          timestamptz not null,
    actor       text not null,
    role        text not null,
    action      text not null,
    target_type text not null,
    target_id   text not null,
    before      jsonb,
    after       jsonb,
    request_id  text not null,
    prev_hash   bytea not null check (length(prev_hash) = 32),
    hash        bytea not null unique check (length(hash) = 32)
);

create trigger audit_log_append_only
    before update or delete on audit_log
    for each statement execute function budgetd_forbid_mutation();
create trigger audit_log_no_truncate
    before truncate on audit_log
    for each statement execute function budgetd_forbid_mutation();

-- Outbox --------------------------------------------------------------------------------------

-- Written in the same transaction as the change it announces; the relay (a later component)
-- drains it with FOR UPDATE SKIP LOCKED. The event id is the row id.
create table outbox (
    id             bigint generated always as identity primary key,
    aggregate_type text not null,
    aggregate_id   text not null,
    event_type     text not null,
    payload        jsonb not null,
    created_at     timestamptz not null,
    published_at   timestamptz
);

create index outbox_unpublished on outbox (id) where published_at is null;
