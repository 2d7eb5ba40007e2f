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
