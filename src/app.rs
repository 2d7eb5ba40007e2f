//! Wiring: the application built from a validated config, with its listener bound, so tests
//! can start the real thing on port 0.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ledger::audit::{Actor, AuditContext};
use ledger::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::{Authenticator, Principal};
use crate::config::Config;
use crate::telemetry;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    config: Config,
}

impl Application {
    /// Connects (lazily) to the database and binds the API listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = Store::connect(&config.database.store_config())
            .await
            .context("database configuration")?;
        let auth = Authenticator::new(config.api.tokens.iter().map(|t| {
            (
                t.hash,
                Principal {
                    name: t.name.clone(),
                    role: t.role.clone(),
                },
            )
        }));
        let listener = TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.api.listen))?;
        let state = AppState {
            store,
            auth: Arc::new(auth),
            metrics: telemetry::metrics_handle(),
            request_timeout: config.api.request_timeout,
        };
        Ok(Application {
            listener,
            state,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then drains in-flight requests for at most the
    /// configured shutdown timeout.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let startup = tokio::spawn(prepare_ledger(
            self.state.store.clone(),
            self.config.clone(),
            stop.clone(),
        ));
        let router = api::router(self.state);
        let drain = stop.clone();
        let serve = axum::serve(self.listener, router).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down");
            drain.cancel();
        });
        let mut served = tokio::spawn(serve.into_future());
        let shutdown_timeout = self.config.api.shutdown_timeout;
        let result = tokio::select! {
            joined = &mut served => joined.context("API server task")?.context("API server"),
            _ = stop.cancelled() => match tokio::time::timeout(shutdown_timeout, served).await {
                Ok(joined) => joined.context("API server task")?.context("API server"),
                Err(_) => {
                    tracing::warn!(?shutdown_timeout, "in-flight requests did not finish in time");
                    Ok(())
                }
            },
        };
        stop.cancel();
        startup.abort();
        result
    }
}

/// Waits until the ledger is migrated, then seeds the price book on a first start. Runs
/// beside the API so that `/healthz` answers while the database is still coming up.
async fn prepare_ledger(store: Store, config: Config, stop: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        match store.is_ready().await {
            Ok(true) => break,
            Ok(false) => tracing::warn!("ledger not migrated yet; run `budgetd migrate`"),
            Err(e) => tracing::warn!(error = %e, "ledger not reachable yet"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    if let Some(seed) = &config.price_book_seed {
        let ctx = AuditContext {
            actor: Actor::system("budgetd-config"),
            request_id: format!("startup-{}", uuid::Uuid::new_v4()),
        };
        match store.seed_price_book(&ctx, seed).await {
            Ok(Some(version)) => {
                tracing::info!(
                    version = version.id,
                    "seeded the price book from the config"
                )
            }
            Ok(None) => tracing::debug!("price book already has versions; not seeding"),
            Err(e) => tracing::error!(error = %e, "could not seed the price book"),
        }
    }
    tracing::info!("ledger ready");
}
