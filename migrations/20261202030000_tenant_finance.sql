-- Enforcement history for finance and dashboards, and what a tenant may read of the ledger.
--
-- `finance.enforcement_history`: one row per enforcement action (no cluster patches, no
-- fencing), for the budget annotations of the tenant cost dashboard and for finance.
--
-- `tenant_finance`: the finance views a tenant's own Grafana data source reads, filtered to the
-- tenant of the login that runs the query. Each tenant with a Grafana folder gets a login role
-- (`tenant_logins`, managed by the Grafana reconciler through `budgetd_tenant_login`), member
-- of `budgetd_tenant_reader`, which may use this schema and nothing else of budgetd's. The
-- views are security barriers: the tenant filter is applied before any condition of the
-- tenant's own query, so no function in a query can see another tenant's row. The filter
-- keys on `session_user` (the login; `set role` cannot change it), so editing a dashboard's
-- SQL reads at most the tenant's own rows, and `finance.*` is not granted at all.

create view finance.enforcement_history as
select id as action_id, tenant_id, period_start, kind, state, step_key, reason,
       spent_amount, forecast_amount, budget_amount, currency::text as currency,
       created_at as opened_at, applied_at, closed_at, close_reason
from enforcement_actions;

grant select on finance.enforcement_history to budgetd_finance;

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'budgetd_tenant_reader') then
        create role budgetd_tenant_reader nologin;
    end if;
end
$$;

-- Role names are global to a Postgres cluster, and one cluster may hold several budgetd
-- databases (staging and production, the test suite's): a login's name carries 6 hex digits of
-- its database's name, `budgetd_<db>_<tenant>` (`-` as `_`; ids longer than 48 characters keep
-- their first 31 and 16 hex digits of their MD5).
create table tenant_logins (
    role_name  text primary key check (role_name ~ '^budgetd_[0-9a-f]{6}_[a-z0-9_]{1,48}$'),
    tenant_id  text not null unique references tenants (id),
    created_at timestamptz not null
);

create schema tenant_finance;

create view tenant_finance.tenant_costs_daily with (security_barrier) as
select c.* from finance.tenant_costs_daily c
where c.tenant_id = (select l.tenant_id from public.tenant_logins l where l.role_name = session_user);

create view tenant_finance.tenant_costs_monthly with (security_barrier) as
select c.* from finance.tenant_costs_monthly c
where c.tenant_id = (select l.tenant_id from public.tenant_logins l where l.role_name = session_user);

create view tenant_finance.budget_status with (security_barrier) as
select s.* from finance.budget_status s
where s.tenant_id = (select l.tenant_id from public.tenant_logins l where l.role_name = session_user);

create view tenant_finance.enforcement_history with (security_barrier) as
select h.* from finance.enforcement_history h
where h.tenant_id = (select l.tenant_id from public.tenant_logins l where l.role_name = session_user);

grant usage on schema tenant_finance to budgetd_tenant_reader;
grant select on all tables in schema tenant_finance to budgetd_tenant_reader;

-- Creates the tenant's login (member of budgetd_tenant_reader) or sets its password, records
-- whose it is, and returns its name.
create function budgetd_tenant_login(p_tenant text, p_password text, p_at timestamptz)
returns text
language plpgsql as $$
declare
    v_id   text := replace(p_tenant, '-', '_');
    v_role text;
begin
    select role_name into v_role from tenant_logins where tenant_id = p_tenant;
    if v_role is null then
        if length(v_id) > 48 then
            v_id := left(v_id, 31) || '_' || left(md5(p_tenant), 16);
        end if;
        v_role := 'budgetd_' || left(md5(current_database()), 6) || '_' || v_id;
        insert into tenant_logins (role_name, tenant_id, created_at) values (v_role, p_tenant, p_at);
    end if;
    if not exists (select 1 from pg_roles where rolname = v_role) then
        -- At most 10 sessions and 30 s per statement: a tenant's dashboards cannot load the
        -- ledger's database.
        execute format('create role %I login connection limit 10 password %L in role budgetd_tenant_reader',
                       v_role, p_password);
        execute format('alter role %I set statement_timeout = %L', v_role, '30s');
    else
        execute format('alter role %I login password %L', v_role, p_password);
    end if;
    return v_role;
end
$$;

-- Drops the tenant's login, if any (its sessions keep running until they end).
create function budgetd_drop_tenant_login(p_tenant text)
returns boolean
language plpgsql as $$
declare
    v_role text;
begin
    delete from tenant_logins where tenant_id = p_tenant returning role_name into v_role;
    if v_role is null then
        return false;
    end if;
    if exists (select 1 from pg_roles where rolname = v_role) then
        execute format('drop role %I', v_role);
    end if;
    return true;
end
$$;
