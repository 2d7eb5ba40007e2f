//! Price-book versions: add, list, and find the version valid at an instant.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};

use super::audit::{self, AuditEvent};
use super::{query, query_scalar};
use super::{unique_violation, Store};
use crate::audit::{now_micros, AuditContext};
use crate::currency::Currency;
use crate::error::Error;
use crate::price_book::{MeterName, NewPriceBookVersion, PriceBookVersion};

/// Which versions to load.
enum Versions {
    All,
    Id(i64),
    ValidAt(DateTime<Utc>),
}

async fn load_versions(
    conn: &mut PgConnection,
    which: Versions,
) -> Result<Vec<PriceBookVersion>, Error> {
    let (id, at) = match which {
        Versions::All => (None, None),
        Versions::Id(id) => (Some(id), None),
        Versions::ValidAt(at) => (None, Some(at)),
    };
    let rows = query(
        "select v.id, v.valid_from, v.currency, v.created_at, v.created_by, \
                coalesce(jsonb_object_agg(r.meter, r.rate::text) filter (where r.meter is not null), \
                         '{}') as rates \
         from price_book_versions v left join price_book_rates r on r.version_id = v.id \
         where ($1::bigint is null or v.id = $1) \
           and ($2::timestamptz is null or v.id = (select id from price_book_versions \
                where valid_from <= $2 order by valid_from desc limit 1)) \
         group by v.id order by v.valid_from",
    )
    .bind(id)
    .bind(at)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let corrupt = |what: String| Error::Database(sqlx::Error::Decode(what.into()));
            let currency: String = row.try_get("currency")?;
            let rates: sqlx::types::Json<BTreeMap<String, String>> = row.try_get("rates")?;
            let rates = rates
                .0
                .into_iter()
                .map(|(meter, rate)| {
                    let meter =
                        MeterName::parse("meter", &meter).map_err(|e| corrupt(e.to_string()))?;
                    let rate: Decimal = rate
                        .parse()
                        .map_err(|_| corrupt(format!("rate {rate:?}")))?;
                    Ok((meter, rate))
                })
                .collect::<Result<_, Error>>()?;
            Ok(PriceBookVersion {
                id: row.try_get("id")?,
                valid_from: row.try_get("valid_from")?,
                currency: Currency::parse("currency", &currency)
                    .map_err(|e| corrupt(e.to_string()))?,
                rates,
                created_at: row.try_get("created_at")?,
                created_by: row.try_get("created_by")?,
            })
        })
        .collect()
}

async fn insert_version(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    new: &NewPriceBookVersion,
) -> Result<PriceBookVersion, Error> {
    let id: i64 = query_scalar(
        "insert into price_book_versions (valid_from, currency, created_at, created_by) \
         values ($1, $2, $3, $4) returning id",
    )
    .bind(new.valid_from)
    .bind(new.currency.code())
    .bind(now_micros())
    .bind(&ctx.actor.name)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| {
        unique_violation(e, "already_exists", || {
            format!(
                "a price-book version valid from {} already exists",
                crate::audit::timestamp(new.valid_from)
            )
        })
    })?;
    let (meters, rates): (Vec<&str>, Vec<Decimal>) =
        new.rates.iter().map(|(m, r)| (m.as_str(), *r)).unzip();
    query(
        "insert into price_book_rates (version_id, meter, rate, currency) \
         select $1, meter, rate, $4 from unnest($2::text[], $3::numeric[]) as r(meter, rate)",
    )
    .bind(id)
    .bind(&meters)
    .bind(&rates)
    .bind(new.currency.code())
    .execute(&mut *conn)
    .await?;
    let version = load_versions(&mut *conn, Versions::Id(id))
        .await?
        .pop()
        .ok_or_else(|| Error::Database(sqlx::Error::RowNotFound))?;
    audit::append(
        conn,
        ctx,
        AuditEvent {
            action: "price_book.version.create",
            target_type: "price_book_version",
            target_id: &id.to_string(),
            before: None,
            after: Some(version.to_json()),
        },
    )
    .await?;
    Ok(version)
}

impl Store {
    pub async fn add_price_book_version(
        &self,
        ctx: &AuditContext,
        new: &NewPriceBookVersion,
    ) -> Result<PriceBookVersion, Error> {
        self.run("add_price_book_version", || async {
            let mut tx = self.begin().await?;
            let version = insert_version(&mut tx, ctx, new).await?;
            tx.commit().await?;
            Ok(version)
        })
        .await
    }

    /// Adds `seed` if the price book is empty, so a first start has prices. Returns the new
    /// version, or `None` when the book already had one.
    pub async fn seed_price_book(
        &self,
        ctx: &AuditContext,
        seed: &NewPriceBookVersion,
    ) -> Result<Option<PriceBookVersion>, Error> {
        self.run("seed_price_book", || async {
            let mut tx = self.begin().await?;
            // Two daemons starting together must not both seed.
            query("lock table price_book_versions in share row exclusive mode")
                .execute(&mut *tx)
                .await?;
            let exists: bool = query_scalar("select exists (select 1 from price_book_versions)")
                .fetch_one(&mut *tx)
                .await?;
            if exists {
                return Ok(None);
            }
            let version = insert_version(&mut tx, ctx, seed).await?;
            tx.commit().await?;
            Ok(Some(version))
        })
        .await
    }

    pub async fn list_price_book_versions(&self) -> Result<Vec<PriceBookVersion>, Error> {
        self.run("list_price_book_versions", || async {
            let mut tx = self.begin().await?;
            let versions = load_versions(&mut tx, Versions::All).await?;
            tx.commit().await?;
            Ok(versions)
        })
        .await
    }

    /// The version in force at `at`: the latest whose `valid_from` is not after it.
    pub async fn price_book_version_at(
        &self,
        at: DateTime<Utc>,
    ) -> Result<Option<PriceBookVersion>, Error> {
        self.run("price_book_version_at", || async {
            let mut tx = self.begin().await?;
            let version = load_versions(&mut tx, Versions::ValidAt(at)).await?.pop();
            tx.commit().await?;
            Ok(version)
        })
        .await
    }
}
