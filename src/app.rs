//! Wiring: the application built from a validated config, with its listener bound, so tests
//! can start the real thing on port 0.

use std::future::Future;
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
use crate::oidc::Oidc;
use crate::serve::{self, ConnectionLimit, ServeSettings};
use crate::{leader, telemetry};
use chrono::Utc;
use collector::config::CollectorSettings;
use collector::Collector;
use enforcer::alertmanager::Alertmanager;
use enforcer::config::EnforcementSettings;
use enforcer::executor::Enforcer;
use enforcer::kubernetes::KubernetesActuator;
use ledger::enforcement::Fence;
use tokio::sync::watch;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    config: Config,
    connections: ConnectionLimit,
}

impl Application {
    /// Connects (lazily) to the database and binds the API listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = Store::connect(&config.database.store_config())
            .await
            .context("database configuration")?
            .with_pseudonymisation_key(config.pseudonymisation_key.as_ref().map(|key| {
                use secrecy::ExposeSecret;
                key.expose_secret().as_bytes().to_vec().into()
            }));
        let auth = authenticator(&config)?;
        let connections = ConnectionLimit::for_this_process(
            config.api.max_connections,
            config.database.max_connections,
        )
        .map_err(anyhow::Error::msg)?;
        if connections.effective < connections.configured as usize {
            tracing::warn!(
                max_connections = connections.effective,
                configured = connections.configured,
                open_files = connections.open_files,
                reserved = connections.reserved,
                "the open-file limit lowers api.max_connections: files are kept for the database pool, the leader and the process' own"
            );
        }
        let listener = TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.api.listen))?;
        let state = AppState {
            store,
            auth: Arc::new(auth),
            metrics: telemetry::metrics_handle(),
            request_timeout: config.api.request_timeout,
            body_timeout: config.api.body_timeout,
            readiness_timeout: config.api.readiness_timeout,
            priced_meters: Arc::new(
                config
                    .collector
                    .iter()
                    .flat_map(|c| {
                        c.collector
                            .meters
                            .iter()
                            .map(|m| (m.name.clone(), m.price_unit.clone()))
                    })
                    .collect(),
            ),
            rate_limits: Arc::new(config.rate_limits.clone()),
            status: config
                .enforcement
                .as_ref()
                .map_or(api::VIEW_STATUS, |e| e.settings.status_params()),
            clock: api::wall_clock(),
            lifecycle: Arc::new(config.lifecycle.clone()),
        };
        Ok(Application {
            listener,
            state,
            config,
            connections,
        })
    }

    /// How many connections the API serves at once.
    pub fn connection_limit(&self) -> ConnectionLimit {
        self.connections
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
                Arc::new(build_collector(settings, self.state.store.clone())?),
                settings.clone(),
            )),
            None => None,
        };
        if let Some((collector, _)) = &collector {
            tokio::spawn(check_scrape_interval(collector.clone()));
        }
        let enforcer = match &self.config.enforcement {
            Some(settings) => Some((
                Arc::new(build_enforcer(settings, self.state.store.clone()).await?),
                settings.interval,
            )),
            None => None,
        };
        let provisioning = if self.config.lifecycle.blueprint.enabled {
            Some(build_provisioning(&self.config).await?)
        } else {
            None
        };
        let relay = match &self.config.kafka {
            Some(settings) => Some(build_relay(settings, self.state.store.clone())?),
            None => None,
        };
        let grafana = self.config.grafana.clone();
        let store = self.state.store.clone();
        let config = self.config.clone();
        let background = stop.clone();
        let workers = tokio::spawn(async move {
            if !prepare_ledger(&store, &config, &background).await {
                return;
            }
            // Only the leader collects, enforces and provisions; a daemon that does none of it
            // does not run for leader.
            if collector.is_none()
                && enforcer.is_none()
                && provisioning.is_none()
                && relay.is_none()
                && grafana.is_none()
            {
                return;
            }
            let leader_config = config.leader.clone();
            let (leader_tx, leader_rx) = watch::channel(None);
            let holder = format!(
                "{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().to_string()[..8]
            );
            let mut tasks = vec![tokio::spawn(leader::run(
                config.database.migrate_url.clone(),
                holder,
                leader_config,
                leader_tx,
                background.clone(),
            ))];
            if let Some((collector, settings)) = collector {
                let mut rx = leader_rx.clone();
                let stop = background.clone();
                tasks.push(tokio::spawn(async move {
                    while leader::until_leading(&mut rx, &stop).await.is_some() {
                        let term = leader::while_leading(&rx, &stop);
                        collector::schedule::run(
                            collector.clone(),
                            settings.schedule.clone(),
                            settings.retry,
                            term,
                        )
                        .await;
                    }
                }));
            }
            if let Some((enforcer, interval)) = enforcer {
                tasks.push(tokio::spawn(run_enforcer(
                    enforcer,
                    interval,
                    leader_rx.clone(),
                    background.clone(),
                )));
            }
            if let Some(client) = provisioning {
                let source = Arc::new(lifecycle::blueprint::StoreSource::new(
                    store.clone(),
                    config.lifecycle.quota_profiles.clone(),
                    leader_rx.clone(),
                ));
                match lifecycle::blueprint::build_reconciler(
                    &config.lifecycle,
                    request_limits(&config.kubernetes),
                    client,
                    source,
                )
                .map_err(anyhow::Error::from)
                .and_then(|reconciler| {
                    Ok(lifecycle::Runner::new(
                        store.clone(),
                        Arc::new(reconciler),
                        lifecycle::blueprint::runner_settings(&config.lifecycle.reconciler),
                    )?)
                }) {
                    Ok(runner) => {
                        let leader = leader_rx.clone();
                        let stop = background.clone();
                        tasks.push(tokio::spawn(async move { runner.run(leader, stop).await }));
                    }
                    // The blueprint was checked at start; this is a bug, not a configuration.
                    Err(e) => tracing::error!(error = %e, "the blueprint reconciler cannot start"),
                }
            }
            if let Some(settings) = grafana {
                match build_grafana(&settings, store.clone(), leader_rx.clone()) {
                    Ok(runner) => {
                        let leader = leader_rx.clone();
                        let stop = background.clone();
                        tasks.push(tokio::spawn(async move { runner.run(leader, stop).await }));
                    }
                    // Settings were validated at start; this is a bug, not a configuration.
                    Err(e) => tracing::error!(error = %e, "the Grafana reconciler cannot start"),
                }
            }
            if let Some((runner, relay)) = relay {
                let leader = leader_rx.clone();
                let stop = background.clone();
                tasks.push(tokio::spawn(async move {
                    runner.run(leader, stop).await;
                    // What librdkafka still holds was not recorded: it is sent again by the
                    // next leader anyway; this only spares the duplicates.
                    let flushed =
                        tokio::task::spawn_blocking(move || relay.flush(Duration::from_secs(5)))
                            .await;
                    if let Ok(Err(e)) = flushed {
                        tracing::info!(error = %e, "Kafka producer not flushed at shutdown");
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        });
        let router = api::router(self.state);
        let settings = ServeSettings {
            max_connections: self.connections.effective,
            header_timeout: self.config.api.header_timeout,
        };
        let mut served = tokio::spawn(serve::serve(self.listener, router, settings, stop.clone()));
        let shutdown_timeout = self.config.api.shutdown_timeout;
        tokio::pin!(shutdown);
        let result = tokio::select! {
            joined = &mut served => joined.context("API server task"),
            () = &mut shutdown => {
                tracing::info!("shutting down");
                stop.cancel();
                match tokio::time::timeout(shutdown_timeout, served).await {
                    Ok(joined) => joined.context("API server task"),
                    Err(_) => {
                        tracing::warn!(?shutdown_timeout, "in-flight requests did not finish in time");
                        Ok(())
                    }
                }
            }
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
pub fn build_collector(settings: &CollectorSettings, store: Store) -> anyhow::Result<Collector> {
    Ok(settings.build(store)?)
}

/// Checks `collector.scrape_interval_seconds` against Prometheus' own configuration once at
/// start, on every replica, leading or not. Every collection checks it again against the data
/// and marks windows whose samples do not fit incomplete; this is the early warning. It only
/// logs: `budgetd_collector_scrape_interval_mismatch` is set by the collections, which only the
/// leader runs, so no follower exports a value that goes stale.
async fn check_scrape_interval(collector: Arc<Collector>) {
    match collector.check_scrape_config().await {
        Ok(Some(checks)) => {
            for check in checks {
                // The job name is a label value from Prometheus: escaped, so that no line
                // break or terminal escape in it reaches the log as one.
                let said = check.to_string();
                let said = crate::telemetry::log_safe(&said);
                if check.is_mismatch() {
                    tracing::warn!(job = ?check.job, "scrape interval mismatch: {said}");
                } else {
                    tracing::info!(job = ?check.job, "scrape interval: {said}");
                }
            }
        }
        Ok(None) => tracing::info!(
            "Prometheus serves no configuration to check collector.scrape_interval_seconds against; it is checked against the data only"
        ),
        Err(e) => tracing::info!(
            error = %e,
            "could not read Prometheus' configuration; collector.scrape_interval_seconds is checked against the data only"
        ),
    }
}

/// The Kafka relay (`[kafka]`): its producer (librdkafka checks `[kafka.properties]` here, so
/// a bad one stops the start) and its runner. librdkafka connects in the background: a broker
/// that is down delays the events, never the start.
fn build_relay(
    settings: &relay::KafkaSettings,
    store: Store,
) -> anyhow::Result<(lifecycle::Runner, Arc<relay::KafkaRelay>)> {
    let relay = Arc::new(relay::KafkaRelay::new(settings)?);
    let runner = lifecycle::Runner::new(store, relay.clone(), settings.runner.clone())?;
    Ok((runner, relay))
}

/// The Grafana reconciler (`[grafana]`) and its runner. Whether Grafana answers with the
/// token is checked once in the background and logged: like Kafka, Grafana being down delays
/// the folders, never the daemon.
fn build_grafana(
    settings: &grafana::GrafanaSettings,
    store: Store,
    leader: watch::Receiver<Option<ledger::enforcement::Fence>>,
) -> anyhow::Result<lifecycle::Runner> {
    let reconciler = Arc::new(grafana::GrafanaReconciler::new(
        settings,
        store.clone(),
        leader,
    )?);
    let check = reconciler.clone();
    tokio::spawn(async move {
        match check.check().await {
            Ok(()) => tracing::info!("Grafana answers with grafana.token"),
            Err(e) => {
                tracing::warn!(error = %e, "Grafana check failed; tenants' folders wait until it answers")
            }
        }
    });
    Ok(lifecycle::Runner::new(
        store,
        reconciler,
        settings.runner.clone(),
    )?)
}

/// Start-up checks of provisioning: the blueprint loads and validates (an error names the file
/// and line) and the Kubernetes client can be made. Returns the client.
async fn build_provisioning(config: &Config) -> anyhow::Result<kube::Client> {
    lifecycle::blueprint::load_blueprint(&config.lifecycle.blueprint)?;
    let cluster = KubernetesActuator::new(config.kubernetes.clone())
        .await
        .map_err(|e| anyhow::anyhow!("Kubernetes client for the blueprint: {e}"))?;
    Ok(cluster.client())
}

/// The provisioner's request limits: `[kubernetes]`'s.
fn request_limits(
    settings: &enforcer::kubernetes::KubernetesSettings,
) -> lifecycle::blueprint::RequestLimits {
    lifecycle::blueprint::RequestLimits {
        request_timeout: settings.request_timeout,
        max_attempts: settings.max_attempts,
        initial_backoff: settings.initial_backoff,
        max_backoff: settings.max_backoff,
    }
}

/// The enforcer with its actuators: the configured Kubernetes API and Alertmanager replicas.
pub async fn build_enforcer(
    settings: &EnforcementSettings,
    store: Store,
) -> anyhow::Result<Enforcer> {
    let cluster = KubernetesActuator::new(settings.kubernetes.clone())
        .await
        .map_err(|e| anyhow::anyhow!("Kubernetes client: {e}"))?;
    let alerts = Alertmanager::new(settings.alertmanager.clone())
        .map_err(|e| anyhow::anyhow!("Alertmanager client: {e}"))?;
    Ok(Enforcer::new(
        store,
        Arc::new(cluster),
        Arc::new(alerts),
        settings.settings.clone(),
    ))
}

/// The enforcement loop: one cycle per interval while this daemon leads.
async fn run_enforcer(
    enforcer: Arc<Enforcer>,
    interval: Duration,
    mut leader: watch::Receiver<Option<Fence>>,
    stop: CancellationToken,
) {
    while let Some(fence) = leader::until_leading(&mut leader, &stop).await {
        match enforcer.run_once(fence, Utc::now()).await {
            Ok(report) => {
                if !report.actions.is_empty() || !report.failed.is_empty() {
                    tracing::info!(
                        tenants = report.tenants,
                        actions = report.actions.len(),
                        failed = report.failed.len(),
                        alerts = report.alerts_firing,
                        "enforcement cycle"
                    );
                }
            }
            Err(e) => {
                metrics::counter!("budgetd_enforcement_failures_total", "kind" => e.metric_label())
                    .increment(1);
                tracing::warn!(error = %e, "enforcement cycle failed");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Waits until the ledger is migrated, then seeds the price book on a first start. Runs
/// beside the API so that `/healthz` answers while the database is still coming up. False if
/// stopped first.
async fn prepare_ledger(store: &Store, config: &Config, stop: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        // A direct attempt first: it fails at once and says where and why (refused, unknown
        // host, no such database), where the pool would wait out its acquire timeout.
        let ready = match store.check_connection().await {
            Ok(()) => store.is_ready().await,
            Err(e) => Err(e),
        };
        match ready {
            Ok(true) => break,
            Ok(false) => {
                tracing::warn!(target_db = %store.target(), "ledger not migrated yet; run `budgetd migrate`")
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "ledger not reachable yet")
            }
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

/// The configured identities: configuration tokens, the bootstrap token and the OIDC issuers
/// (the daemon's and `budgetd report audit`'s).
pub fn authenticator(config: &Config) -> anyhow::Result<Authenticator> {
    let oidc = if config.oidc.issuers.is_empty() {
        None
    } else {
        for issuer in &config.oidc.issuers {
            tracing::info!(issuer = %issuer.issuer, audience = %issuer.audience, "accepting JWTs of the OIDC issuer");
        }
        Some(Oidc::new(config.oidc.clone()).context("the OIDC client")?)
    };
    if config.api.bootstrap_token.is_some() {
        tracing::info!(
            "BUDGETD_BOOTSTRAP_ADMIN_TOKEN is set: it is the admin token bootstrap-admin until the first admin token is created (POST /api/v1/tokens), then it is refused"
        );
    }
    Ok(Authenticator::new(config.api.tokens.iter().map(|t| {
        (
            t.hash,
            Principal {
                name: t.name.clone(),
                role: t.role.clone(),
            },
        )
    }))
    .with_bootstrap(config.api.bootstrap_token)
    .with_oidc(oidc))
}
