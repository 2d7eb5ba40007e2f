-- Offboarding: a resumable state machine of its own, the final cost report, retention and
-- pseudonymisation.
--
--   * tenant_offboardings: one row per offboarded tenant, written with the move to
--     'offboarding'. Its steps (access revoked, resources deleted, completed) are filled in once
--     each, never cleared: the row shows how far offboarding got and resumes from there.
--   * tenant_final_reports: the tenant's costs from the start of its open budget period (or of
--     the month) to the offboarding instant, as the costs route shows them. Immutable; its
--     SHA-256 is in the audit record that wrote it.
--   * personal_data: the personal values (owner, display name) that audit records written from
--     now on refer to by id ({"personal_data": <id>}) instead of holding them. The audit chain
--     hashes the reference, so pseudonymising the value here leaves the chain intact. Records
--     written before this migration keep the values in their hashed form.
--   * pseudonymisation_key: the per-installation HMAC key, generated here once; used unless
--     BUDGETD_PSEUDONYMISATION_KEY is set.
--   * Retention: a tenant row is never deleted once it has ledger entries (foreign keys) or
--     audit records (trigger below): nothing of a tenant's history can disappear with it.

create table tenant_offboardings (
    tenant_id                 text primary key references tenants (id),
    started_at                timestamptz not null,
    requested_by              text not null,
    reason                    text not null check (length(reason) between 1 and 1000
                                                   and reason !~ '[[:cntrl:]]'),
    grace_until               timestamptz not null check (grace_until >= started_at),
    retain_until              timestamptz not null check (retain_until > started_at),
    pseudonymise_display_name boolean not null,
    access_revoked_at         timestamptz,
    resources_deleted_at      timestamptz,
    completed_at              timestamptz,
    -- Steps happen in order: resources only after access is revoked and the grace period ended,
    -- completion with the deletion.
    check (resources_deleted_at is null or (access_revoked_at is not null
                                            and resources_deleted_at >= grace_until)),
    check ((completed_at is null) = (resources_deleted_at is null))
);

create function budgetd_offboarding_steps_once() returns trigger
language plpgsql as $$
begin
    if new.tenant_id <> old.tenant_id or new.started_at <> old.started_at
       or new.requested_by <> old.requested_by or new.reason <> old.reason
       or new.grace_until <> old.grace_until or new.retain_until <> old.retain_until
       or new.pseudonymise_display_name <> old.pseudonymise_display_name
       or (old.access_revoked_at is not null and new.access_revoked_at is distinct from old.access_revoked_at)
       or (old.resources_deleted_at is not null and new.resources_deleted_at is distinct from old.resources_deleted_at)
       or (old.completed_at is not null and new.completed_at is distinct from old.completed_at) then
        raise exception 'tenant_offboardings: a recorded step or setting cannot change (tenant %)', old.tenant_id
            using errcode = 'insufficient_privilege';
    end if;
    return new;
end
$$;

create trigger tenant_offboardings_steps_once
    before update on tenant_offboardings
    for each row execute function budgetd_offboarding_steps_once();
create trigger tenant_offboardings_no_delete
    before delete on tenant_offboardings
    for each statement execute function budgetd_forbid_mutation();
create trigger tenant_offboardings_no_truncate
    before truncate on tenant_offboardings
    for each statement execute function budgetd_forbid_mutation();

create table tenant_final_reports (
    tenant_id   text primary key references tenant_offboardings (tenant_id),
    period_from date not null,
    period_to   date not null check (period_to >= period_from),
    closed_at   timestamptz not null,
    -- The daily cost rows at full precision (amounts and quantities as decimal strings).
    rows        jsonb not null check (jsonb_typeof(rows) = 'array'),
    sha256      bytea not null check (length(sha256) = 32)
);

create trigger tenant_final_reports_immutable
    before update or delete on tenant_final_reports
    for each statement execute function budgetd_forbid_mutation();
create trigger tenant_final_reports_no_truncate
    before truncate on tenant_final_reports
    for each statement execute function budgetd_forbid_mutation();

create table personal_data (
    id               bigint generated always as identity primary key,
    tenant_id        text not null references tenants (id),
    field            text not null check (field in ('owner', 'display_name')),
    value            text not null check (length(value) between 1 and 256 and value !~ '[[:cntrl:]]'),
    pseudonymised_at timestamptz,
    unique (tenant_id, field, value)
);

create table pseudonymisation_key (
    singleton boolean primary key default true check (singleton),
    key       bytea not null check (length(key) = 32)
);

-- 32 bytes from two random (v4) UUIDs: 244 random bits from the server's strong generator.
insert into pseudonymisation_key (key)
values (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

create trigger pseudonymisation_key_immutable
    before update or delete on pseudonymisation_key
    for each statement execute function budgetd_forbid_mutation();

create function budgetd_tenant_retained() returns trigger
language plpgsql as $$
begin
    if exists (select 1 from audit_log where target_type = 'tenant' and target_id = old.id) then
        raise exception 'tenant % has audit records and is retained: tenants are never deleted', old.id
            using errcode = 'insufficient_privilege';
    end if;
    return old;
end
$$;

create trigger tenants_retained
    before delete on tenants
    for each row execute function budgetd_tenant_retained();
