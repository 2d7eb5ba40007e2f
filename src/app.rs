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
use crate::config::{CollectorSettings, Config};
use crate::telemetry;
use collector::source::Prometheus;
use collector::Collector;

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
            priced_meters: Arc::new(
                config
                    .collector
                    .iter()
                    .flat_map(|c| c.collector.meters.iter().map(|m| m.name.clone()))
                    .collect(),
            ),
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
        let collector = match &self.config.collector {
            Some(settings) => Some((
                Arc::new(build_collector(
                    &self.config,
                    settings,
                    self.state.store.clone(),
                )?),
                settings.clone(),
            )),
            None => None,
        };
        let store = self.state.store.clone();
        let config = self.config.clone();
        let background = stop.clone();
        let workers = tokio::spawn(async move {
            if !prepare_ledger(&store, &config, &background).await {
                return;
            }
            if let Some((collector, settings)) = collector {
                collector::schedule::run(collector, settings.schedule, settings.retry, background)
                    .await;
            }
        });
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
        if tokio::time::timeout(shutdown_timeout, workers)
            .await
            .is_err()
        {
            tracing::warn!("background work did not stop in time");
        }
        result
    }
}

/// The collector, reading the configured Prometheus.
pub fn build_collector(
    config: &Config,
    settings: &CollectorSettings,
    store: Store,
) -> anyhow::Result<Collector> {
    let source = Prometheus::new(
        config.prometheus.url.clone(),
        config.prometheus.timeout,
        settings.retry,
    )
    .map_err(|e| anyhow::anyhow!("Prometheus client: {e}"))?;
    Ok(Collector::new(
        Arc::new(source),
        store,
        settings.collector.clone(),
    ))
}

/// Waits until the ledger is migrated, then seeds the price book on a first start. Runs
/// beside the API so that `/healthz` answers while the database is still coming up. False if
/// stopped first.
async fn prepare_ledger(store: &Store, config: &Config, stop: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        match store.is_ready().await {
            Ok(true) => break,
            Ok(false) => tracing::warn!("ledger not migrated yet; run `budgetd migrate`"),
            Err(e) => tracing::warn!(error = %e, "ledger not reachable yet"),
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
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
    true
}
