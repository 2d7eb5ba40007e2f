//! The Alertmanager client against a real Alertmanager.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

use chrono::{DateTime, Utc};
use enforcer::alertmanager::{Alertmanager, AlertmanagerSettings};
use enforcer::alerts::{Alert, AlertError, AlertName, AlertSink, Severity};
use ledger::tenant::TenantId;
use reqwest::Url;
use testkit::alertmanager::{AlertmanagerProcess, ReceivedAlert};

use crate::counters::Counters;

const MAX_ATTEMPTS: u32 = 3;

fn settings(urls: Vec<Url>) -> AlertmanagerSettings {
    AlertmanagerSettings {
        urls,
        request_timeout: Duration::from_secs(5),
        max_attempts: MAX_ATTEMPTS,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

fn client(urls: Vec<Url>) -> Alertmanager {
    Alertmanager::new(settings(urls)).expect("valid settings")
}

/// Whole seconds, so what Alertmanager shows back (milliseconds) compares equal.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now")
}

fn firing(tenant: &str, spent: &str) -> Alert {
    let now = now();
    Alert {
        name: AlertName::TenantBudgetThreshold,
        tenant: TenantId::parse(tenant).expect("tenant id"),
        threshold_percent: 80,
        severity: Severity::Warning,
        period: "2026-11-01".into(),
        annotations: BTreeMap::from([
            ("spent".to_owned(), spent.to_owned()),
            ("budget".to_owned(), "1000.00 EUR".to_owned()),
            (
                "summary".to_owned(),
                format!("{tenant} spent {spent} of 1000.00 EUR"),
            ),
        ]),
        starts_at: now - chrono::Duration::minutes(10),
        ends_at: now + chrono::Duration::minutes(20),
        generator_url: Some(format!(
            "http://budgetd.example/api/v1/tenants/{tenant}/budget"
        )),
    }
}

fn resolved(alert: &Alert) -> Alert {
    Alert {
        ends_at: now() - chrono::Duration::seconds(1),
        ..alert.clone()
    }
}

fn labels(alert: &Alert) -> BTreeMap<String, String> {
    alert
        .labels()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// The active alerts of `am` with the tenant label `tenant`.
async fn alerts_of(am: &AlertmanagerProcess, tenant: &str) -> Vec<ReceivedAlert> {
    am.alerts()
        .await
        .into_iter()
        .filter(|a| a.labels.get("tenant").map(String::as_str) == Some(tenant))
        .collect()
}

fn name(url: &Url) -> String {
    url.to_string()
}

#[tokio::test]
async fn a_firing_alert_arrives_with_exactly_its_labels_and_amounts_only_in_annotations() {
    let am = AlertmanagerProcess::start().await;
    let alert = firing("acme", "812.40 EUR");

    let report = client(vec![am.url()])
        .send(std::slice::from_ref(&alert))
        .await;

    assert_eq!(report.delivered, [name(&am.url())]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let received = am.alerts().await;
    assert_eq!(received.len(), 1, "{received:?}");
    let got = &received[0];
    assert_eq!(
        got.labels,
        BTreeMap::from([
            ("alertname".to_owned(), "TenantBudgetThreshold".to_owned()),
            ("tenant".to_owned(), "acme".to_owned()),
            ("threshold_percent".to_owned(), "80".to_owned()),
            ("severity".to_owned(), "warning".to_owned()),
            ("period".to_owned(), "2026-11-01".to_owned()),
        ])
    );
    assert_eq!(got.annotations, alert.annotations);
    assert!(got.labels.values().all(|v| !v.contains("EUR")));
    assert_eq!(got.starts_at, alert.starts_at);
    assert_eq!(got.ends_at, alert.ends_at);
    assert_eq!(got.generator_url, alert.generator_url);
    assert_eq!(got.status.state, "active");
}

#[tokio::test]
async fn a_resent_alert_stays_one_alert_and_keeps_its_starts_at() {
    let am = AlertmanagerProcess::start().await;
    let sink = client(vec![am.url()]);
    let first = firing("acme", "812.40 EUR");
    assert!(sink
        .send(std::slice::from_ref(&first))
        .await
        .failed
        .is_empty());

    // The next resend: the spend grew, the alert's identity did not.
    let resent = Alert {
        annotations: firing("acme", "845.10 EUR").annotations,
        ends_at: first.ends_at + chrono::Duration::minutes(1),
        ..first.clone()
    };
    let report = sink.send(std::slice::from_ref(&resent)).await;

    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let received = am.alerts().await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].labels, labels(&first));
    assert_eq!(received[0].starts_at, first.starts_at);
    assert_eq!(received[0].annotations["spent"], "845.10 EUR");
    assert_eq!(received[0].ends_at, resent.ends_at);
}

#[tokio::test]
async fn resolving_an_alert_makes_it_inactive_and_leaves_the_others() {
    let am = AlertmanagerProcess::start().await;
    let sink = client(vec![am.url()]);
    let acme = firing("acme", "812.40 EUR");
    let globex = firing("globex", "950.00 EUR");
    assert!(sink
        .send(&[acme.clone(), globex.clone()])
        .await
        .failed
        .is_empty());
    assert_eq!(alerts_of(&am, "acme").await.len(), 1);

    let counters = Counters::default();
    let report = {
        let _recording = metrics::set_default_local_recorder(&counters);
        sink.send(&[resolved(&acme), globex.clone()]).await
    };

    assert_eq!(report.delivered, [name(&am.url())]);
    let sent = "budgetd_alerts_sent_total";
    assert_eq!(counters.get(sent, &[("state", "resolved")]), 1);
    assert_eq!(counters.get(sent, &[("state", "firing")]), 1);
    assert!(alerts_of(&am, "acme").await.is_empty());
    let still_firing = alerts_of(&am, "globex").await;
    assert_eq!(still_firing.len(), 1);
    assert_eq!(still_firing[0].labels, labels(&globex));
}

#[tokio::test]
async fn every_replica_receives_the_alert() {
    let a = AlertmanagerProcess::start().await;
    let b = AlertmanagerProcess::start().await;
    let alert = firing("acme", "812.40 EUR");

    let report = client(vec![a.url(), b.url()])
        .send(std::slice::from_ref(&alert))
        .await;

    assert_eq!(report.delivered, [name(&a.url()), name(&b.url())]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    for am in [&a, &b] {
        let received = am.alerts().await;
        assert_eq!(received.len(), 1, "{}: {received:?}", am.url());
        assert_eq!(received[0].labels, labels(&alert));
        assert_eq!(received[0].starts_at, alert.starts_at);
    }
}

#[tokio::test]
async fn a_stopped_replica_is_retried_and_reported_and_a_later_send_repairs_it() {
    let a = AlertmanagerProcess::start().await;
    let mut b = AlertmanagerProcess::start().await;
    let sink = client(vec![a.url(), b.url()]);
    let alert = firing("acme", "812.40 EUR");
    b.stop();

    let counters = Counters::default();
    let report = {
        let _recording = metrics::set_default_local_recorder(&counters);
        sink.send(std::slice::from_ref(&alert)).await
    };

    assert_eq!(report.delivered, [name(&a.url())]);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].0, name(&b.url()));
    assert!(
        matches!(report.failed[0].1, AlertError::Unreachable(_)),
        "{:?}",
        report.failed[0].1
    );
    assert_eq!(alerts_of(&a, "acme").await.len(), 1);
    let requests = "budgetd_alertmanager_requests_total";
    assert_eq!(
        counters.get(requests, &[("outcome", "ok"), ("replica", "0")]),
        1
    );
    assert_eq!(
        counters.get(requests, &[("outcome", "unreachable"), ("replica", "1")]),
        u64::from(MAX_ATTEMPTS)
    );
    assert_eq!(
        counters.get("budgetd_alerts_sent_total", &[("state", "firing")]),
        1
    );

    b.restart().await;
    // Alertmanager keeps alerts in memory: the restarted replica knows nothing yet.
    assert!(b.alerts().await.is_empty());
    let report = sink.send(std::slice::from_ref(&alert)).await;

    assert_eq!(report.delivered, [name(&a.url()), name(&b.url())]);
    let received = b.alerts().await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].labels, labels(&alert));
    assert_eq!(received[0].starts_at, alert.starts_at);
}

#[tokio::test]
async fn an_alert_alertmanager_rejects_is_reported_once_without_retries() {
    let am = AlertmanagerProcess::start().await;
    let invalid = r#"alertmanager_alerts_invalid_total{version="v2"}"#;
    assert_eq!(am.metric(invalid).await, Some(0.0));
    let good = firing("acme", "812.40 EUR");
    // Alertmanager rejects an alert that ends before it starts.
    let bad = Alert {
        ends_at: good.starts_at - chrono::Duration::minutes(1),
        ..firing("globex", "950.00 EUR")
    };

    let counters = Counters::default();
    let report = {
        let _recording = metrics::set_default_local_recorder(&counters);
        client(vec![am.url()]).send(&[good, bad]).await
    };

    assert!(report.delivered.is_empty(), "{:?}", report.delivered);
    assert_eq!(report.failed.len(), 1);
    match &report.failed[0] {
        (replica, AlertError::Status { status: 400, body }) if *replica == name(&am.url()) => {
            assert!(
                body.contains("start time must be before end time"),
                "{body}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(am.metric(invalid).await, Some(1.0), "one request, no retry");
    assert_eq!(
        counters.get(
            "budgetd_alertmanager_requests_total",
            &[("outcome", "4xx"), ("replica", "0")]
        ),
        1
    );
    // A 400 does not mean nothing was taken: Alertmanager keeps the valid alerts of the batch.
    assert_eq!(alerts_of(&am, "acme").await.len(), 1);
    assert!(alerts_of(&am, "globex").await.is_empty());
}

#[tokio::test]
async fn a_replica_url_that_404s_is_reported_without_retries_and_the_others_still_deliver() {
    let am = AlertmanagerProcess::start().await;
    let wrong_prefix = am.url().join("not-alertmanager/").expect("url");
    let alert = firing("acme", "812.40 EUR");

    let counters = Counters::default();
    let report = {
        let _recording = metrics::set_default_local_recorder(&counters);
        client(vec![wrong_prefix.clone(), am.url()])
            .send(&[alert])
            .await
    };

    assert_eq!(report.delivered, [name(&am.url())]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, name(&wrong_prefix));
    assert!(
        matches!(report.failed[0].1, AlertError::Status { status: 404, .. }),
        "{:?}",
        report.failed[0].1
    );
    assert_eq!(
        counters.get(
            "budgetd_alertmanager_requests_total",
            &[("outcome", "4xx"), ("replica", "0")]
        ),
        1
    );
    assert_eq!(alerts_of(&am, "acme").await.len(), 1);
}

#[tokio::test]
async fn a_replica_that_never_answers_times_out_after_retries_and_the_others_still_deliver() {
    let am = AlertmanagerProcess::start().await;
    // Connections are accepted by the kernel (backlog) but nobody ever answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url =
        Url::parse(&format!("http://{}", silent.local_addr().expect("addr"))).expect("url");
    let sink = Alertmanager::new(AlertmanagerSettings {
        request_timeout: Duration::from_millis(300),
        ..settings(vec![silent_url.clone(), am.url()])
    })
    .expect("valid settings");

    let counters = Counters::default();
    let report = {
        let _recording = metrics::set_default_local_recorder(&counters);
        sink.send(&[firing("acme", "812.40 EUR")]).await
    };

    assert_eq!(report.delivered, [name(&am.url())]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, name(&silent_url));
    assert!(
        matches!(report.failed[0].1, AlertError::Timeout { timeout_ms: 300 }),
        "{:?}",
        report.failed[0].1
    );
    assert_eq!(
        counters.get(
            "budgetd_alertmanager_requests_total",
            &[("outcome", "timeout"), ("replica", "0")]
        ),
        u64::from(MAX_ATTEMPTS)
    );
    assert_eq!(alerts_of(&am, "acme").await.len(), 1);
}

#[tokio::test]
async fn replicas_are_sent_to_concurrently_so_a_hanging_one_does_not_hold_up_the_others() {
    let am = AlertmanagerProcess::start().await;
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url =
        Url::parse(&format!("http://{}", silent.local_addr().expect("addr"))).expect("url");
    // The hanging replica comes first: sent one after the other, the second would wait for it.
    let sink = Alertmanager::new(AlertmanagerSettings {
        request_timeout: Duration::from_secs(30),
        max_attempts: 1,
        ..settings(vec![silent_url, am.url()])
    })
    .expect("valid settings");
    let sending = tokio::spawn(async move { sink.send(&[firing("acme", "812.40 EUR")]).await });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alerts_of(&am, "acme").await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the alert did not reach the answering replica while the other hung"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(
        !sending.is_finished(),
        "the send should still wait for the hanging replica"
    );
    sending.abort();
}

#[tokio::test]
async fn an_empty_batch_sends_nothing() {
    let am = AlertmanagerProcess::start().await;

    let counters = Counters::default();
    let report = {
        let _recording = metrics::set_default_local_recorder(&counters);
        client(vec![am.url()]).send(&[]).await
    };

    assert!(report.delivered.is_empty(), "{:?}", report.delivered);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(counters.total("budgetd_alertmanager_requests_total"), 0);
    assert!(am.alerts().await.is_empty());
}
