//! Cost reads from the daily rollups.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};

use super::query;
use super::Store;
use crate::currency::Currency;
use crate::error::Error;
use crate::tenant::TenantId;

/// One tenant's cost of one meter on one UTC day, at full precision. A day has one per price
/// unit its entries were priced in (more than one only if the meter's price unit changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyCost {
    pub tenant: TenantId,
    pub day: NaiveDate,
    pub meter: String,
    pub quantity: Decimal,
    pub unit: String,
    pub amount: Decimal,
    pub currency: Currency,
    /// `quantity` in `price_unit`, to 12 decimal places (`budgetd_priced_quantity`, as in
    /// `finance.tenant_costs_daily`).
    pub priced_quantity: Decimal,
    /// The unit the meter's rates are quoted in, e.g. `core_hour`.
    pub price_unit: String,
}

impl Store {
    /// Daily costs for days in [from, to), for one tenant or all, ordered by tenant, day and
    /// meter.
    pub async fn daily_costs(
        &self,
        tenant: Option<&TenantId>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DailyCost>, Error> {
        self.run("daily_costs", || async {
            let mut tx = self.begin().await?;
            let costs = daily_costs_in(&mut tx, tenant, from, to).await?;
            tx.commit().await?;
            Ok(costs)
        })
        .await
    }
}

/// [`Store::daily_costs`] in the caller's transaction (the final report reads them with the
/// offboarding's write, so it closes the period at that instant).
pub(super) async fn daily_costs_in(
    conn: &mut PgConnection,
    tenant: Option<&TenantId>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<DailyCost>, Error> {
    let rows = query(
        "select tenant_id, day, meter, quantity, unit, amount, currency, price_unit, \
                budgetd_priced_quantity(quantity, units_per_price_unit) as priced_quantity \
         from ledger_rollup_daily \
         where day >= $1 and day < $2 and ($3::text is null or tenant_id = $3) \
         order by tenant_id, day, meter, unit, currency, price_unit, units_per_price_unit",
    )
    .bind(from)
    .bind(to)
    .bind(tenant.map(TenantId::as_str))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let corrupt = |e: crate::error::Invalid| {
                Error::Database(sqlx::Error::Decode(e.to_string().into()))
            };
            let currency: String = row.try_get("currency")?;
            Ok(DailyCost {
                tenant: TenantId::parse(row.try_get("tenant_id")?).map_err(corrupt)?,
                day: row.try_get("day")?,
                meter: row.try_get("meter")?,
                quantity: row.try_get("quantity")?,
                unit: row.try_get("unit")?,
                amount: row.try_get("amount")?,
                currency: Currency::parse("currency", &currency).map_err(corrupt)?,
                priced_quantity: row.try_get("priced_quantity")?,
                price_unit: row.try_get("price_unit")?,
            })
        })
        .collect()
}
