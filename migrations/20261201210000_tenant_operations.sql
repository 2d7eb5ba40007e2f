-- Tenant operations: the namespaces a tenant owns, incident isolation, and operator
-- suspensions (kept apart from the budget's enforcement actions, so budget logic can never
-- open, restore or resume one).

-- One namespace belongs to at most one tenant (the primary key). A tenant that is live owns at
-- least one; the blueprint reconciler applies the tenant's objects in each.
create table tenant_namespaces (
    namespace text primary key
        check (namespace ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' and length(namespace) <= 63
               and namespace <> 'default' and namespace !~ '^(kube|openshift)-'),
    tenant_id text not null references tenants (id),
    added_at  timestamptz not null
);

create index tenant_namespaces_tenant on tenant_namespaces (tenant_id, namespace);

-- Tenants that existed before: each live one owns the namespace named like its id, as a
-- tenant created without naming namespaces does.
insert into tenant_namespaces (namespace, tenant_id, added_at)
select t.id, t.id, now() from tenants t
where t.state in ('active', 'suspended', 'offboarding')
  and t.id <> 'default' and t.id !~ '^(kube|openshift)-';

-- Namespaces a request asks for: claimed (into tenant_namespaces) when it is approved.
alter table tenant_requests add column requested_namespaces text[] not null default '{}';

-- Incident isolation: the blueprint reconciler applies a deny-all NetworkPolicy while set.
alter table tenants
    add column isolated_at timestamptz,
    add column isolated_by text,
    add column isolation_reason text,
    add constraint tenants_isolation_whole
        check ((isolated_at is null) = (isolated_by is null)
               and (isolated_at is null) = (isolation_reason is null));

-- An operator's suspension: opened with the tenant's move to 'suspended', applied by the
-- leader's enforcer like a budget suspension (the prior values recorded before the first
-- write), and restored exactly after the operator resumes the tenant.
--
--   open       resumed_at is null: the tenant is suspended by an operator;
--   resuming   resumed_at set, restored_at null: the enforcer restores `backward`;
--   restored   restored_at set.
create table operator_suspensions (
    suspension_id bigint generated always as identity primary key,
    tenant_id     text not null references tenants (id),
    reason        text not null check (length(reason) between 1 and 1000),
    suspended_by  text not null,
    suspended_at  timestamptz not null,
    forward       jsonb,
    backward      jsonb,
    applied_at    timestamptz,
    resume_reason text,
    resumed_by    text,
    resumed_at    timestamptz,
    restored_at   timestamptz,
    attempts      integer not null default 0,
    last_error    text,
    fencing_token bigint,
    check ((forward is null) = (backward is null)),
    check ((resumed_at is null) = (resumed_by is null)
           and (resumed_at is null) = (resume_reason is null)),
    check (restored_at is null or resumed_at is not null)
);

-- At most one suspension per tenant that is not yet restored.
create unique index operator_suspensions_unrestored on operator_suspensions (tenant_id)
    where restored_at is null;
