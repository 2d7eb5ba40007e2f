-- Reconcilers: the consumers of the outbox (crate `lifecycle`). Each has a name and a durable
-- cursor; the SQL that moves it is in `ledger/src/store/reconcilers.rs`.
--
-- Two orders, because an identity id is taken when a row is inserted, not when it commits:
--   * `txid` (the writing transaction's id) is the scan order. A reader takes only rows whose
--     transaction is older than its snapshot's xmin, every one of which has ended, so no row
--     that commits later can ever sort before the cursor: nothing is skipped, nothing is read
--     twice. (A cursor on `id` alone skips an event whose transaction commits after a later
--     id's.)
--   * `seq` (1, 2, 3, ... per aggregate) is the order of one tenant's changes. It is assigned
--     under a transaction-level advisory lock on the aggregate, held to commit, so it follows the
--     order in which the changes commit, whatever order their transactions took their ids in.
--     The unique index is the check in the database.

alter table outbox add column txid xid8 not null default pg_current_xact_id();
alter table outbox add column seq bigint;

update outbox o set seq = numbered.seq
from (
    select id, row_number() over (partition by aggregate_type, aggregate_id order by id) as seq
    from outbox
) numbered
where o.id = numbered.id;

alter table outbox alter column seq set not null;
alter table outbox add constraint outbox_seq_positive check (seq > 0);
create unique index outbox_aggregate_seq on outbox (aggregate_type, aggregate_id, seq);
create index outbox_scan on outbox (txid, id);

-- Runs as a volatile function, so under read committed its select takes a snapshot after the
-- lock is granted and sees the previous holder's row. (Under repeatable read it would not: the
-- unique index then fails the insert rather than order it wrongly.)
create function budgetd_outbox_seq() returns trigger
language plpgsql as $$
begin
    -- 0x6f627378 ("obsx"): the first key of the two-key advisory locks on outbox aggregates.
    perform pg_advisory_xact_lock(1868723064, hashtext(new.aggregate_type || '/' || new.aggregate_id));
    select coalesce(max(seq), 0) + 1 into new.seq
    from outbox
    where aggregate_type = new.aggregate_type and aggregate_id = new.aggregate_id;
    return new;
end
$$;

create trigger outbox_seq before insert on outbox
    for each row execute function budgetd_outbox_seq();

create table reconcilers (
    name            text primary key check (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    -- The last outbox row taken into the backlog, in scan order (txid, id).
    cursor_txid     xid8 not null default '0'::xid8,
    cursor_id       bigint not null default 0,
    last_success_at timestamptz
);

-- Where each reconciler stands with each aggregate (tenant).
create table reconciler_aggregates (
    reconciler      text not null references reconcilers (name),
    aggregate_type  text not null,
    aggregate_id    text not null,
    -- The seq of the last event handled; the next one handled is delivered_seq + 1.
    delivered_seq   bigint not null default 0 check (delivered_seq >= 0),
    -- Failed attempts at the next event; more than zero means parked.
    attempts        integer not null default 0 check (attempts >= 0),
    next_attempt_at timestamptz,
    last_error      text,
    primary key (reconciler, aggregate_type, aggregate_id),
    check ((attempts = 0) = (next_attempt_at is null))
);

create index reconciler_aggregates_parked on reconciler_aggregates (reconciler) where attempts > 0;

-- Events a reconciler has scanned and not yet handled, per aggregate in seq order. The cursor
-- moves in the transaction that fills it; an event leaves it in the transaction that records
-- it handled.
create table reconciler_backlog (
    reconciler     text not null references reconcilers (name),
    aggregate_type text not null,
    aggregate_id   text not null,
    seq            bigint not null,
    event_id       bigint not null references outbox (id),
    primary key (reconciler, aggregate_type, aggregate_id, seq),
    unique (reconciler, event_id)
);
