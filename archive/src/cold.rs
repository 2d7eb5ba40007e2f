//! The object store that holds archived months: a local directory, S3, Azure Blob or GCS,
//! chosen by URL. Every call has a timeout per attempt, bounded attempts with backoff, and
//! metrics (`budgetd_archive_store_requests_total{op, outcome}`,
//! `budgetd_archive_store_request_duration_seconds{op}`). The cloud clients' own retries are
//! off, so the attempts configured are all there are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use url::Url;

use crate::config::CallLimits;
use crate::error::Error;

/// One folder of an object store.
#[derive(Debug, Clone)]
pub struct ColdStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: Url,
    limits: CallLimits,
}

impl ColdStore {
    /// The store of `url` (a folder). A local folder is created if it is missing.
    pub fn open(url: &Url, limits: CallLimits) -> Result<ColdStore, Error> {
        let failed = |e: object_store::Error| Error::Store {
            op: "open",
            url: url.to_string(),
            cause: e.to_string(),
        };
        let options = ClientOptions::new()
            .with_timeout(limits.timeout)
            .with_connect_timeout(limits.connect_timeout);
        let no_retries = RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        };
        let (store, prefix): (Arc<dyn ObjectStore>, &str) = match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|_| Error::Store {
                    op: "open",
                    url: url.to_string(),
                    cause: "not an absolute local path".to_owned(),
                })?;
                std::fs::create_dir_all(&dir).map_err(|e| Error::Store {
                    op: "open",
                    url: url.to_string(),
                    cause: format!("cannot create {}: {e}", dir.display()),
                })?;
                let local = LocalFileSystem::new_with_prefix(&dir).map_err(failed)?;
                (Arc::new(local), "")
            }
            "s3" | "s3a" => (
                Arc::new(
                    AmazonS3Builder::from_env()
                        .with_url(url.as_str())
                        .with_client_options(options)
                        .with_retry(no_retries)
                        .build()
                        .map_err(failed)?,
                ),
                url.path(),
            ),
            "az" | "azure" | "abfs" | "abfss" => (
                Arc::new(
                    MicrosoftAzureBuilder::from_env()
                        .with_url(url.as_str())
                        .with_client_options(options)
                        .with_retry(no_retries)
                        .build()
                        .map_err(failed)?,
                ),
                url.path(),
            ),
            "gs" => (
                Arc::new(
                    GoogleCloudStorageBuilder::from_env()
                        .with_url(url.as_str())
                        .with_client_options(options)
                        .with_retry(no_retries)
                        .build()
                        .map_err(failed)?,
                ),
                url.path(),
            ),
            other => {
                return Err(Error::Store {
                    op: "open",
                    url: url.to_string(),
                    cause: format!("no object store for scheme {other:?}"),
                })
            }
        };
        let prefix = Path::from_url_path(prefix).map_err(|e| Error::Store {
            op: "open",
            url: url.to_string(),
            cause: e.to_string(),
        })?;
        Ok(ColdStore {
            store,
            prefix,
            url: url.clone(),
            limits,
        })
    }

    /// The URL of `name` (a path below the folder), for messages and records.
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{}", self.url.as_str().trim_end_matches('/'), name)
    }

    fn path(&self, name: &str) -> Path {
        name.split('/')
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// Writes `name` whole (an object appears complete or not at all).
    pub async fn put(&self, name: &str, bytes: Bytes) -> Result<(), Error> {
        let path = self.path(name);
        self.call("put", name, || {
            let payload = PutPayload::from(bytes.clone());
            let path = path.clone();
            async move { self.store.put(&path, payload).await.map(|_| ()) }
        })
        .await
    }

    /// Reads `name` whole.
    pub async fn get(&self, name: &str) -> Result<Bytes, Error> {
        let path = self.path(name);
        self.call("get", name, || {
            let path = path.clone();
            async move { self.store.get(&path).await?.bytes().await }
        })
        .await
    }

    async fn call<T, F, Fut>(&self, op: &'static str, name: &str, attempt: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, object_store::Error>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let started = Instant::now();
            let outcome = tokio::time::timeout(self.limits.timeout, attempt()).await;
            metrics::histogram!("budgetd_archive_store_request_duration_seconds", "op" => op)
                .record(started.elapsed().as_secs_f64());
            let (label, cause, again) = match outcome {
                Ok(Ok(value)) => {
                    metrics::counter!("budgetd_archive_store_requests_total", "op" => op, "outcome" => "ok")
                        .increment(1);
                    return Ok(value);
                }
                Ok(Err(e)) => {
                    let (label, again) = classify(&e);
                    (label, e.to_string(), again)
                }
                Err(_) => (
                    "timeout",
                    format!("no answer within {} ms", self.limits.timeout.as_millis()),
                    true,
                ),
            };
            metrics::counter!("budgetd_archive_store_requests_total", "op" => op, "outcome" => label)
                .increment(1);
            if !again || tries >= self.limits.attempts {
                return Err(Error::Store {
                    op,
                    url: self.url_of(name),
                    cause: format!("{cause} (attempt {tries} of {})", self.limits.attempts),
                });
            }
            tracing::warn!(op, object = %self.url_of(name), error = %cause, attempt = tries, "object store call failed, retrying");
            tokio::time::sleep(self.backoff(tries)).await;
        }
    }

    fn backoff(&self, tries: u32) -> Duration {
        let doubled = self
            .limits
            .initial_backoff
            .saturating_mul(1 << tries.saturating_sub(1).min(16));
        doubled.min(self.limits.max_backoff)
    }
}

/// The metric label of an object-store error, and whether another attempt may succeed.
fn classify(e: &object_store::Error) -> (&'static str, bool) {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => ("not_found", false),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ("denied", false),
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => ("invalid", false),
        _ => ("error", true),
    }
}
