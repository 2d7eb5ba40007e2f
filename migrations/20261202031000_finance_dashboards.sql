-- What the platform overview dashboard needs beyond the cost views: the tenants themselves.
--
-- `finance.tenants`: one row per tenant with the columns the governance report already shows
-- finance (id, display name, owner, owner group, lifecycle state, data residency, last state
-- change) and nothing else of the tenants table (no labels, no isolation or offboarding
-- details). After offboarding the owner and display name are the pseudonyms the ledger keeps.
-- Tenants in state 'requested' are the requests waiting for an operator's decision; the
-- enforcement actions waiting for one are `finance.enforcement_history` rows in state 'pending'.
--
-- Like every finance view, a contract: columns are only ever appended.

create view finance.tenants as
select id, display_name, owner, owner_group, state, data_residency as residency, state_changed_at
from tenants;

grant select on finance.tenants to budgetd_finance;
