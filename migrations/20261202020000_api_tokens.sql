-- Managed API tokens (POST/GET/DELETE /api/v1/tokens): a named bearer token with a role (and
-- a tenant for the tenant role), created and revoked through the API without a restart. Only
-- the SHA-256 of the secret is kept; the secret is shown once, at creation. Rows are never
-- deleted: a revoked or expired token stays for the access review and the audit trail.

create table api_tokens (
    id            bigint generated always as identity primary key,
    name          text not null check (length(name) between 1 and 64),
    role          text not null
                  check (role in ('admin', 'operator', 'finance', 'viewer', 'auditor', 'tenant')),
    tenant_id     text references tenants (id),
    token_sha256  bytea not null unique check (length(token_sha256) = 32),
    created_at    timestamptz not null,
    created_by    text not null,
    expires_at    timestamptz check (expires_at > created_at),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    revoked_by    text,
    -- Only the tenant role is scoped to a tenant, and it always is.
    check ((role = 'tenant') = (tenant_id is not null)),
    check ((revoked_at is null) = (revoked_by is null))
);

-- A name identifies one live token; a revoked token's name may be used again.
create unique index api_tokens_live_name on api_tokens (name) where revoked_at is null;

-- The bootstrap token's check: has an admin token ever been created?
create index api_tokens_admin on api_tokens (id) where role = 'admin';

-- A token's identity, role, scope and creation never change; only use and revocation are
-- recorded, and a revocation is final.
create function api_tokens_immutable() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        raise exception 'api_tokens rows are never deleted (revoke instead)';
    end if;
    if new.id <> old.id or new.name <> old.name or new.role <> old.role
       or new.tenant_id is distinct from old.tenant_id or new.token_sha256 <> old.token_sha256
       or new.created_at <> old.created_at or new.created_by <> old.created_by
       or new.expires_at is distinct from old.expires_at then
        raise exception 'api_tokens: only last_used_at, revoked_at and revoked_by change';
    end if;
    if old.revoked_at is not null and (new.revoked_at is distinct from old.revoked_at
                                       or new.revoked_by is distinct from old.revoked_by) then
        raise exception 'api_tokens: a revocation is final';
    end if;
    return new;
end $$;

create trigger api_tokens_immutable
    before update or delete on api_tokens
    for each row execute function api_tokens_immutable();
