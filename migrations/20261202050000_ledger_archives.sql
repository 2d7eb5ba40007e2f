-- Closed months that left (or are leaving) the hot database: where their Parquet files are,
-- the manifest that proves a copy complete, and the audit record that holds it.
--
-- A month's row is written when its export is recorded (the manifest's audit record in the
-- same transaction), `verified_at` once the files were read back and matched the manifest,
-- `archived_at` in the transaction that detaches and drops the month's partition. From its
-- first row on, a month gets no new partition (`budgetd_ensure_ledger_partition` refuses it)
-- and its partition takes no new entry (`ledger_entries_pYYYYMM_archived`, check (false) not
-- valid).

create table ledger_archives (
    month       date primary key check (month = date_trunc('month', month)::date),
    url         text not null check (length(url) between 1 and 2048),
    manifest    jsonb not null check (jsonb_typeof(manifest) = 'object'),
    audit_seq   bigint not null references audit_log (seq),
    exported_at timestamptz not null,
    verified_at timestamptz,
    archived_at timestamptz,
    -- nothing is dropped without a verified copy
    check (archived_at is null or verified_at is not null)
);

-- A month whose archiving has begun gets no partition again: entries written for it would be
-- in neither the archive nor the database's copy of the month. (As 20261202040000's, plus the
-- check once the partition is found missing.)
create or replace function budgetd_ensure_ledger_partition(month date) returns boolean
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
    if exists (select 1 from ledger_archives a where a.month = budgetd_ensure_ledger_partition.month) then
        raise exception 'ledger month % is archived: it takes no new entries', to_char(month, 'YYYY-MM')
            using errcode = 'check_violation';
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

-- A price-book version that priced entries of an archived month stays immutable: the
-- manifests list the versions of their months.
create or replace function budgetd_price_version_immutable() returns trigger
language plpgsql as $$
declare
    version bigint;
begin
    if tg_table_name = 'price_book_versions' then
        version := old.id;
    else
        version := old.version_id;
    end if;
    if exists (select 1 from ledger_entries where price_version = version)
       or exists (select 1 from ledger_archives
                  where manifest -> 'price_versions' @> to_jsonb(version)) then
        raise exception 'price-book version % has priced ledger entries and is immutable', version
            using errcode = 'integrity_constraint_violation';
    end if;
    return case when tg_op = 'DELETE' then old else new end;
end
$$;
