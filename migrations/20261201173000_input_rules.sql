-- What the API refuses, the tables refuse too (issue 9).
--
--   * A budget is more than zero. NOT VALID: budgets are history the store only inserts, and a
--     zero budget set before this release stays as it was (its status is `exceeded` with no
--     percentage); new rows are checked.
--   * Free text a person typed is one line (`ledger::names::SingleLine`): no C0 or C1 control
--     character, no DEL, no line or paragraph separator, no bidirectional embedding, override
--     or isolate. (Postgres cannot store NUL in text at all.)
--     - tenants: validated now, because the store parses every tenant row it reads with the
--       same rule, and a row that fails would make the tenant unreadable. The display name and
--       owner were already free of control characters; only the separators and bidi controls
--       are new. If one is found, the migration stops and names the tenants to fix.
--     - enforcement_exemptions: NOT VALID, since the table is append-only and old reasons are
--       read back as they were written.
--     - enforcement_actions.decision_reason has no constraint: the enforcer updates action
--       rows, and a NOT VALID check would make an older action with such a reason impossible
--       to update. The store takes only a parsed `Reason` for it.

alter table budgets add constraint budgets_amount_positive check (amount > 0) not valid;

do $$
declare
    bad text;
begin
    select string_agg(id, ', ' order by id) into bad
    from tenants
    where display_name ~ '[\x01-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]'
       or owner ~ '[\x01-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]';
    if bad is not null then
        raise exception 'tenants % have a display name or owner that is not one line of text '
            '(control characters, line separators or bidi controls); correct them with '
            'PATCH /api/v1/tenants/{id} on the previous release, then migrate again', bad;
    end if;
end
$$;

alter table tenants
    add constraint tenants_display_name_one_line
        check (display_name !~ '[\x01-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]'),
    add constraint tenants_owner_one_line
        check (owner !~ '[\x01-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]');

alter table enforcement_exemptions
    add constraint enforcement_exemptions_reason_one_line
        check (reason !~ '[\x01-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]') not valid;
