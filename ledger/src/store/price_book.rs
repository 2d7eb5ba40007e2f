//! Price-book versions: add, withdraw or replace an unused one, list, and find the version
//! valid at an instant. The ledger keeps one currency (see [`currency_clash`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};

use super::audit::{self, AuditEvent};
use super::{query, query_as, query_scalar};
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

/// Serialises the writers of currencies (budgets and price-book versions), so that two of them
/// cannot both pass [`currency_clash`]; the database's `budgetd_one_currency` trigger takes it
/// too. ("budgetdC")
const CURRENCY_LOCK: i64 = 0x6275_6467_6574_6443;

/// Something in the ledger in another currency.
pub(crate) enum CurrencyClash {
    Version { id: i64, currency: String },
    Budget { tenant: String, currency: String },
}

/// The ledger keeps one currency: every budget and every price-book version are in it, so spend
/// is always comparable with a budget. Takes the currency lock for the rest of the transaction
/// and returns what is in another currency than `currency`, if anything.
pub(crate) async fn currency_clash(
    conn: &mut PgConnection,
    currency: Currency,
) -> Result<Option<CurrencyClash>, Error> {
    query("select pg_advisory_xact_lock($1)")
        .bind(CURRENCY_LOCK)
        .execute(&mut *conn)
        .await?;
    let version: Option<(i64, String)> = query_as(
        "select id, currency::text from price_book_versions where currency <> $1 \
         order by valid_from desc limit 1",
    )
    .bind(currency.code())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((id, currency)) = version {
        return Ok(Some(CurrencyClash::Version { id, currency }));
    }
    let budget: Option<(String, String)> = query_as(
        "select tenant_id, currency::text from budgets where currency <> $1 \
         order by effective_from desc limit 1",
    )
    .bind(currency.code())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(budget.map(|(tenant, currency)| CurrencyClash::Budget { tenant, currency }))
}

/// No other version is added or withdrawn until the transaction ends (collectors reading and
/// referencing versions are not held up).
async fn lock_versions(conn: &mut PgConnection) -> Result<(), Error> {
    query("lock table price_book_versions in share row exclusive mode")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_version(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    new: &NewPriceBookVersion,
) -> Result<PriceBookVersion, Error> {
    if let Some(clash) = currency_clash(&mut *conn, new.currency).await? {
        let what = match clash {
            CurrencyClash::Version { id, currency } => {
                format!("price-book version {id} prices in {currency}")
            }
            CurrencyClash::Budget { tenant, currency } => {
                format!("the budget of tenant {tenant:?} is in {currency}")
            }
        };
        return Err(Error::conflict(
            "currency_mismatch",
            format!(
                "the ledger keeps one currency, so that spend and budgets compare: {what}, not {}",
                new.currency
            ),
        ));
    }
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

fn in_use(id: i64, why: &str) -> Error {
    Error::conflict(
        "version_in_use",
        format!("price-book version {id} {why}; it can no longer be withdrawn or replaced (add a later version instead)"),
    )
}

/// Removes version `id`, which must have priced no entry, and audits it. Unallocated usage that
/// recorded it keeps referring to it until [`repoint_unallocated`] (the reference is checked at
/// commit), so that a replacement may take its `valid_from`.
async fn remove_version(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    id: i64,
    replaced_by: Option<DateTime<Utc>>,
) -> Result<PriceBookVersion, Error> {
    let version = load_versions(&mut *conn, Versions::Id(id))
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound {
            what: "price-book version",
            id: id.to_string(),
        })?;
    let priced: bool =
        // Archived months' entries count too: their manifests list the versions.
        query_scalar(
            "select exists (select 1 from ledger_entries where price_version = $1) \
             or exists (select 1 from ledger_archives \
                        where manifest -> 'price_versions' @> to_jsonb($1::bigint))",
        )
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    if priced {
        return Err(in_use(id, "has priced ledger entries"));
    }
    query("set constraints unallocated_usage_price_version_fkey deferred")
        .execute(&mut *conn)
        .await?;
    // The database refuses this too if an entry priced by the version committed meanwhile
    // (the immutability trigger, and the entries' foreign key).
    let deleted = async {
        query("delete from price_book_rates where version_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        query("delete from price_book_versions where id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await
    }
    .await;
    match deleted {
        Ok(_) => {}
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("23000") | Some("23503")) =>
        {
            return Err(in_use(id, "has priced ledger entries"));
        }
        Err(e) => return Err(e.into()),
    }
    let mut after = serde_json::Map::new();
    after.insert("withdrawn".into(), serde_json::Value::Bool(true));
    if let Some(valid_from) = replaced_by {
        after.insert(
            "replaced_by_valid_from".into(),
            crate::audit::timestamp(valid_from).into(),
        );
    }
    audit::append(
        conn,
        ctx,
        AuditEvent {
            action: "price_book.version.withdraw",
            target_type: "price_book_version",
            target_id: &id.to_string(),
            before: Some(version.to_json()),
            after: Some(serde_json::Value::Object(after)),
        },
    )
    .await?;
    Ok(version)
}

/// Unallocated usage that recorded the removed version `id` now records the version in force at
/// its window's start without it (the one that prices the window's entries from now on). Usage
/// that would have none left keeps the version: the removal is refused.
async fn repoint_unallocated(conn: &mut PgConnection, id: i64) -> Result<(), Error> {
    let orphans: i64 = query_scalar(
        "select count(*) from unallocated_usage u where u.price_version = $1 \
           and not exists (select 1 from price_book_versions v where v.valid_from <= u.window_start)",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    if orphans > 0 {
        return Err(in_use(
            id,
            &format!("is the only version in force for {orphans} rows of collected unallocated usage; replace it with a version valid from the same time"),
        ));
    }
    query(
        "update unallocated_usage u set price_version = ( \
             select v.id from price_book_versions v where v.valid_from <= u.window_start \
             order by v.valid_from desc limit 1) \
         where u.price_version = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    pub async fn add_price_book_version(
        &self,
        ctx: &AuditContext,
        new: &NewPriceBookVersion,
    ) -> Result<PriceBookVersion, Error> {
        self.run("add_price_book_version", || async {
            let mut tx = self.begin().await?;
            lock_versions(&mut tx).await?;
            let version = insert_version(&mut tx, ctx, new).await?;
            tx.commit().await?;
            Ok(version)
        })
        .await
    }

    /// Withdraws version `id`, which must not have priced any ledger entry: for a version that
    /// should never have been added (a wrong rate, a typo in `valid_from`). Audited. Windows it
    /// would have priced are priced by the version in force without it, unallocated usage that
    /// recorded it moves to that version, and usage it could not price is priced again by the
    /// collector. `NotFound` for an unknown id; `Conflict` `version_in_use` if it priced an
    /// entry, or if collected usage would be left without a version.
    pub async fn withdraw_price_book_version(
        &self,
        ctx: &AuditContext,
        id: i64,
    ) -> Result<PriceBookVersion, Error> {
        self.run("withdraw_price_book_version", || async {
            let mut tx = self.begin().await?;
            lock_versions(&mut tx).await?;
            let version = remove_version(&mut tx, ctx, id, None).await?;
            repoint_unallocated(&mut tx, id).await?;
            tx.commit().await?;
            Ok(version)
        })
        .await
    }

    /// Withdraws version `replaces` (as [`Store::withdraw_price_book_version`]) and adds `new`
    /// in its place, in one transaction: no window is priced in between, and `new` may have the
    /// same `valid_from`. Both are audited.
    pub async fn replace_price_book_version(
        &self,
        ctx: &AuditContext,
        replaces: i64,
        new: &NewPriceBookVersion,
    ) -> Result<PriceBookVersion, Error> {
        self.run("replace_price_book_version", || async {
            let mut tx = self.begin().await?;
            lock_versions(&mut tx).await?;
            remove_version(&mut tx, ctx, replaces, Some(new.valid_from)).await?;
            let version = insert_version(&mut tx, ctx, new).await?;
            repoint_unallocated(&mut tx, replaces).await?;
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
            lock_versions(&mut tx).await?;
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
