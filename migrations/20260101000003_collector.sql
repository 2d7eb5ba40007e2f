-- The collector's progress and what it could not bill to a tenant.

-- One row per collected window. `complete` is false when Prometheus answered with warnings or
-- a completeness probe found scrape gaps; `incomplete_tenants` names tenants whose inputs were
-- missing even though the window as a whole was fine. The enforcer refuses to act on either.
create table collected_windows (
    window_start       timestamptz not null,
    window_end         timestamptz not null,
    complete           boolean not null,
    incomplete_tenants text[] not null default '{}',
    problems           text[] not null default '{}',
    entries            integer not null check (entries >= 0),
    collected_at       timestamptz not null,
    primary key (window_start, window_end),
    check (window_end > window_start)
);

-- The end of the last window the daemon committed in order. It moves only in the transaction
-- that commits the window's entries.
create table collector_watermark (
    singleton    boolean primary key default true check (singleton),
    window_end   timestamptz not null,
    updated_at   timestamptz not null
);

-- Usage from namespaces without a tenant label, or labelled with a tenant the ledger does not
-- know. Never dropped: finance sees it in finance.unallocated_daily.
create table unallocated_usage (
    window_start       timestamptz not null,
    window_end         timestamptz not null,
    namespace_or_label text not null,
    reason             text not null check (reason in ('no_tenant_label', 'unknown_tenant')),
    meter              text not null,
    quantity           numeric not null check (quantity >= 0),
    unit               text not null,
    primary key (window_start, window_end, namespace_or_label, reason, meter)
);

create view finance.unallocated_daily as
select (window_start at time zone 'UTC')::date as day, namespace_or_label, meter,
       sum(quantity) as quantity, unit
from unallocated_usage
group by 1, 2, 3, 5;

grant select on finance.unallocated_daily to budgetd_finance;
