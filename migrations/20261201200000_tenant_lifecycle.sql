-- The tenant lifecycle core: self-service requests with approval.
--
-- A request reserves its tenant id as a tenants row in state 'requested'; the request's own
-- details (budget asked for, justification, who asked, the decision) are in tenant_requests,
-- one row per requested tenant. Approval moves the tenant to 'active' and writes its budget;
-- rejection moves it to 'rejected', a final state that keeps the id reserved (its audit
-- trail stays the id's alone). Tenants created directly by an operator have no request row.

alter table tenants drop constraint tenants_state_check;
alter table tenants add constraint tenants_state_check
    check (state in ('requested', 'active', 'suspended', 'offboarding', 'offboarded', 'rejected'));

-- What the blueprint needs per tenant. NULL for tenants created before requests carried them.
alter table tenants
    add column owner_group text
        check (owner_group is null or (length(owner_group) between 1 and 256
                                       and owner_group !~ '[[:cntrl:]]')),
    add column quota_profile text
        check (quota_profile is null or quota_profile ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$');

create table tenant_requests (
    tenant_id       text primary key references tenants (id),
    budget_amount   numeric not null check (budget_amount > 0),
    budget_currency char(3) not null check (budget_currency ~ '^[A-Z]{3}$'),
    budget_period   text not null check (budget_period in ('monthly', 'quarterly', 'yearly')),
    justification   text not null check (length(justification) between 1 and 2000),
    requested_by    text not null,
    requested_at    timestamptz not null,
    decision        text check (decision in ('approved', 'rejected')),
    decided_by      text,
    decided_at      timestamptz,
    decision_reason text,
    -- A decision is whole or absent, and never made by the one who asked for approval.
    check ((decision is null) = (decided_by is null)
           and (decision is null) = (decided_at is null)
           and (decision is null) = (decision_reason is null)),
    check (decision is distinct from 'approved' or decided_by <> requested_by)
);

create index tenant_requests_undecided on tenant_requests (requested_at) where decision is null;
