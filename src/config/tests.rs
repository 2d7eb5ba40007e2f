use std::collections::BTreeMap;

use secrecy::ExposeSecret;

use super::*;

const EXAMPLE: &str = include_str!("../../examples/budgetd.toml");

fn env_of(env: &[(&str, &str)]) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("budgetd-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("budgetd.toml");
    std::fs::write(&path, text).unwrap();
    let env = env_of(env);
    let result = Config::load(Some(&path), |k| env.get(k).cloned());
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// The configuration from the environment alone.
fn from_env(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env_of(env);
    Config::load(None, |k| env.get(k).cloned())
}

/// The 1-based line of the first line of `text` that starts with `start`.
fn line_of(text: &str, start: &str) -> usize {
    text.lines().position(|l| l.starts_with(start)).unwrap() + 1
}

const DB: (&str, &str) = (
    "BUDGETD_DATABASE_URL",
    "postgres://budgetd@db.example:5432/ledger",
);

#[test]
fn the_example_config_is_valid() {
    let config = load(EXAMPLE, &[]).unwrap();
    let seed = config.price_book_seed.unwrap();
    assert_eq!(seed.currency.code(), "EUR");
    assert!(seed.rates.len() >= 5);
    assert!(config.collector.is_some() && config.enforcement.is_some());
}

#[test]
fn the_response_size_limit_has_a_default() {
    let example = load(EXAMPLE, &[]).unwrap();
    let limit = |c: &Config| c.collector.as_ref().unwrap().prometheus.max_response_bytes;
    assert_eq!(limit(&example), 64 * 1024 * 1024);
    let text = EXAMPLE.replacen("max_response_bytes = 67108864\n", "", 1);
    assert_ne!(text, EXAMPLE);
    let config = load(&text, &[]).unwrap();
    assert_eq!(limit(&config), 64 * 1024 * 1024);
    assert_eq!(
        limit(&config),
        PrometheusSection::default().max_response_bytes
    );
}

#[test]
fn environment_overrides_the_file() {
    let config = load(
        EXAMPLE,
        &[
            (
                "BUDGETD_DATABASE_URL",
                "postgres://x@db.example:5432/ledger",
            ),
            ("BUDGETD_API_LISTEN", "127.0.0.1:9999"),
            ("BUDGETD_PROMETHEUS_URL", "http://prom.example:9090"),
            (
                "BUDGETD_ALERTMANAGER_URL",
                "http://am-0:9093, http://am-1:9093",
            ),
            ("BUDGETD_COLLECTOR_START", "2026-11-01T00:00:00Z"),
            ("BUDGETD_LOG_FORMAT", "json"),
            ("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", "0123456789abcdef0123"),
        ],
    )
    .unwrap();
    assert_eq!(
        config.database.url.expose_secret(),
        "postgres://x@db.example:5432/ledger"
    );
    assert_eq!(config.api.listen.port(), 9999);
    let collector = config.collector.as_ref().unwrap();
    assert_eq!(collector.prometheus.url.host_str(), Some("prom.example"));
    assert_eq!(
        collector.collector.start.unwrap().to_rfc3339(),
        "2026-11-01T00:00:00+00:00"
    );
    assert_eq!(
        config.enforcement.as_ref().unwrap().alertmanager.urls.len(),
        2
    );
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(
        config.api.bootstrap_token,
        Some(TokenHash::of("0123456789abcdef0123"))
    );
    // BUDGETD_COLLECTOR_START does not switch the collector on.
    let config = from_env(&[DB, ("BUDGETD_COLLECTOR_START", "2026-11-01T00:00:00Z")]).unwrap();
    assert!(config.collector.is_none());
}

/// Operational limits have defaults: a config without them (or without a file) gets them.
#[test]
fn limits_default_when_not_set() {
    for (line, check) in [
        (
            "max_retries = 3\n",
            (|c: &Config| assert_eq!(c.database.max_retries, 3)) as fn(&Config),
        ),
        ("statement_timeout_ms = 30000\n", |c| {
            assert_eq!(c.database.statement_timeout, Duration::from_secs(30))
        }),
        ("retry_seconds = 5\n", |c| {
            assert_eq!(c.leader.retry, Duration::from_secs(5))
        }),
        ("windows_per_batch = 288\n", |c| {
            assert_eq!(
                c.collector.as_ref().unwrap().collector.windows_per_batch,
                288
            )
        }),
        ("interval_seconds = 60\n", |c| {
            assert_eq!(
                c.enforcement.as_ref().unwrap().interval,
                Duration::from_secs(60)
            )
        }),
    ] {
        let text = EXAMPLE.replacen(line, "", 1);
        assert_ne!(text, EXAMPLE, "example lacks {line}");
        check(&load(&text, &[]).unwrap_or_else(|e| panic!("without {line}: {e}")));
    }

    // Enforcement without [kubernetes] uses the kubeconfig or the in-cluster account; collecting
    // or enforcing without [leader] uses the default election timing.
    let section = |name: &str, last: &str| {
        let start = EXAMPLE.find(name).unwrap();
        let end = start + EXAMPLE[start..].find(last).unwrap() + last.len();
        format!("{}{}", &EXAMPLE[..start], &EXAMPLE[end..])
    };
    let no_kube = load(&section("[kubernetes]", "max_backoff_ms = 5000"), &[]).unwrap();
    let kube = &no_kube.enforcement.unwrap().kubernetes;
    assert_eq!(kube.api_url, None);
    assert_eq!(kube.tenant_label, "tenant");
    assert_eq!(kube.request_timeout, Duration::from_secs(5));
    let no_leader = load(&section("[leader]", "timeout_ms = 5000"), &[]).unwrap();
    assert_eq!(no_leader.leader.keepalive_seconds, 15);
    assert_eq!(no_leader.leader.check, Duration::from_secs(5));
}

#[test]
fn one_shot_commands_need_only_the_database_url() {
    let config = from_env(&[DB]).unwrap();
    assert_eq!(
        config.database.migrate_url.expose_secret(),
        "postgres://budgetd@db.example:5432/ledger"
    );
    assert_eq!(config.database.max_connections, 10);
    assert_eq!(config.database.migrate_timeout, Duration::from_secs(120));
    assert_eq!(config.api.listen.to_string(), "127.0.0.1:8080");
    assert!(config.collector.is_none(), "no [collector]: no collecting");
    assert!(
        config.enforcement.is_none(),
        "no [enforcement]: no enforcing"
    );
    assert!(config.price_book_seed.is_none());
    let err = from_env(&[]).unwrap_err();
    assert_eq!(err.key, "database.url");
    assert_eq!(
        err.message,
        "is required: set it in the configuration file (--config or BUDGETD_CONFIG) or with BUDGETD_DATABASE_URL"
    );
}

/// Without an explicit migrate_url (file or BUDGETD_MIGRATE_DATABASE_URL), migrations and the
/// leader lock follow the effective database.url.
#[test]
fn migrate_url_follows_the_database_url() {
    assert!(
        !EXAMPLE.contains("\nmigrate_url"),
        "the example leaves migrate_url commented out"
    );
    let from_file = load(EXAMPLE, &[]).unwrap();
    assert_eq!(
        from_file.database.migrate_url.expose_secret(),
        "postgres://budgetd@127.0.0.1:5432/budgetd"
    );
    let config = load(EXAMPLE, &[DB]).unwrap();
    assert_eq!(
        config.database.migrate_url.expose_secret(),
        "postgres://budgetd@db.example:5432/ledger"
    );
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    let direct = (
        "BUDGETD_MIGRATE_DATABASE_URL",
        "postgres://budgetd@direct.example/ledger",
    );
    let config = load(EXAMPLE, &[DB, direct]).unwrap();
    assert_eq!(config.database.migrate_url.expose_secret(), direct.1);
    // A migrate_url in the file is explicit, and a start-up warning says it does not follow.
    let text = EXAMPLE.replacen("# migrate_url = ", "migrate_url = ", 1);
    let config = load(&text, &[DB]).unwrap();
    assert_eq!(
        config.database.migrate_url.expose_secret(),
        "postgres://budgetd@127.0.0.1:5432/budgetd"
    );
    assert!(
        config.warnings()[0].contains("database.migrate_url from the file"),
        "{:?}",
        config.warnings()
    );
}

#[test]
fn an_unknown_key_is_named_with_its_section_its_line_and_the_key_meant() {
    let text = EXAMPLE.replacen(
        "statement_timeout_ms = 30000",
        "statment_timeout = 30000",
        1,
    );
    let line = line_of(&text, "statment_timeout");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "config: line {line}: database.statment_timeout: unknown key (did you mean statement_timeout_ms?)"
        )
    );
    assert_eq!(
        (err.key.as_str(), err.line),
        ("database.statment_timeout", Some(line))
    );

    // In an array of tables, in a nested table, and a whole section.
    let text =
        format!("{EXAMPLE}\n[[api.tokens]]\nname = \"t\"\nrole = \"viewer\"\nsha265 = \"ab\"\n");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.key, "api.tokens[0].sha265");
    assert_eq!(err.line, Some(line_of(&text, "sha265")));
    assert!(err.message.contains("did you mean sha256?"), "{err}");
    let text = EXAMPLE.replacen("max_attempts = 5\n", "max_attempt = 5\n", 1);
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.key, "collector.retry.max_attempt");
    assert_eq!(err.line, Some(line_of(&text, "max_attempt =")));
    let err = load(&format!("{EXAMPLE}\n[databse]\nurl = \"x\"\n"), &[]).unwrap_err();
    assert_eq!(err.key, "databse");
    assert!(err.message.contains("did you mean database?"), "{err}");
    let text = EXAMPLE.replacen(
        "\ntimeout_ms = 30000\n",
        "\ntimeout_ms = 30000\nsurprise = 1\n",
        1,
    );
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.line, Some(line_of(&text, "surprise")));
    assert_eq!(err.key, "prometheus.surprise");
    assert!(
        err.message
            .starts_with("unknown key (known keys: url, timeout_ms"),
        "{err}"
    );
}

#[test]
fn a_value_of_the_wrong_type_names_the_key_and_its_line() {
    let text = EXAMPLE.replacen("max_connections = 10", "max_connections = \"ten\"", 1);
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.key, "database.max_connections");
    assert_eq!(err.line, Some(line_of(&text, "max_connections")));
    assert!(
        err.message.contains("invalid type: string \"ten\""),
        "{err}"
    );
    let text = EXAMPLE.replacen(
        "[enforcement]\nenabled = true",
        "[enforcement]\nenabled = \"yes\"",
        1,
    );
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.key, "enforcement.enabled");
    assert_eq!(err.line, Some(line_of(&text, "enabled = \"yes\"")));
    // A meter without its query: the key that is missing, on its table's line.
    let text = format!(
        "{EXAMPLE}\n[[meters]]\nname = \"cpu\"\nunit = \"core_seconds\"\nprice_unit = \"core_hour\"\nunits_per_price_unit = \"3600\"\n"
    );
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.key, "meters[0].query");
    assert_eq!(err.message, "is required");
    assert_eq!(err.line, Some(line_of(&text, "[[meters]]")));
    // Bad TOML: the line of the problem.
    let err = load("[database]\nurl = \n", &[]).unwrap_err();
    assert_eq!((err.key.as_str(), err.line), ("TOML syntax", Some(2)));
}

#[test]
fn problems_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "statement_timeout_ms = 30000",
            "statement_timeout_ms = 0",
            "database.statement_timeout_ms",
        ),
        (
            "max_retries = 3",
            "max_retries = 11",
            "database.max_retries",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"localhost\"",
            "api.listen",
        ),
        (
            "currency = \"EUR\"",
            "currency = \"EURO\"",
            "price_book.seed.currency",
        ),
        (
            "cpu = \"0.031\"",
            "cpu = \"-0.031\"",
            "price_book.seed.rates.cpu",
        ),
        (
            "cpu = \"0.031\"",
            "cpu = \"1000000.01\"",
            "price_book.seed.rates.cpu",
        ),
        (
            "max_rate = \"1000000\"",
            "max_rate = \"100000001\"",
            "price_book.max_rate",
        ),
        (
            "url = \"http://127.0.0.1:9090\"",
            "url = \"ftp://x\"",
            "prometheus.url",
        ),
        (
            "max_response_bytes = 67108864",
            "max_response_bytes = 64",
            "prometheus.max_response_bytes",
        ),
        ("format = \"text\"", "format = \"xml\"", "log.format"),
        (
            "filter = \"info,sqlx=warn\"",
            "filter = \"info,=[\"",
            "log.filter",
        ),
    ];
    for (from, to, key) in cases {
        assert!(EXAMPLE.contains(from), "example lacks {from}");
        let text = EXAMPLE.replacen(from, to, 1);
        let err = load(&text, &[]).expect_err(to);
        assert_eq!(err.key, *key, "{to}: {err}");
        let line = line_of(&text, to.lines().next().unwrap());
        assert_eq!(err.line, Some(line), "{to}: {err}");
    }
    // A meter's own rate limit: within the ceiling, and binding the seed too.
    let by_meter = |gpu: &str| {
        EXAMPLE.replacen(
            "# [price_book.max_rate_by_meter]\n# gpu = \"50000\"",
            &format!("[price_book.max_rate_by_meter]\ngpu = \"{gpu}\""),
            1,
        )
    };
    for (gpu, key) in [
        ("0", "price_book.max_rate_by_meter.gpu"),
        ("1", "price_book.seed.rates.gpu"),
    ] {
        let err = load(&by_meter(gpu), &[]).unwrap_err();
        assert_eq!(err.key, key, "{err}");
    }
    let limits = load(&by_meter("1.2"), &[]).unwrap().rate_limits;
    let meter = |m| ledger::price_book::MeterName::parse("m", m).unwrap();
    assert_eq!(limits.max_rate(&meter("gpu")).to_string(), "1.2");
    assert_eq!(limits.max_rate(&meter("cpu")).to_string(), "1000000");
    let err = load(EXAMPLE, &[("BUDGETD_DATABASE_URL", "mysql://x")]).unwrap_err();
    assert_eq!(err.key, "database.url");
    assert_eq!(err.line, None, "the value is not from the file");
    assert!(
        err.message.ends_with("(set by BUDGETD_DATABASE_URL)"),
        "{err}"
    );
    assert!(
        !err.message.contains("mysql://x"),
        "the URL may hold a secret"
    );
    let err = load(EXAMPLE, &[("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", "short")]).unwrap_err();
    assert_eq!(err.key, "BUDGETD_BOOTSTRAP_ADMIN_TOKEN");
    // Required only where needed: Prometheus when collecting, Alertmanager when enforcing.
    let no_prometheus = EXAMPLE.replacen("url = \"http://127.0.0.1:9090\"\n", "", 1);
    assert_eq!(load(&no_prometheus, &[]).unwrap_err().key, "prometheus.url");
    let off = no_prometheus.replacen(
        "[collector]\nenabled = true",
        "[collector]\nenabled = false",
        1,
    );
    assert!(load(&off, &[]).unwrap().collector.is_none());
    let no_am = EXAMPLE.replacen("urls = [\"http://127.0.0.1:9093\"]\n", "", 1);
    assert_eq!(load(&no_am, &[]).unwrap_err().key, "alertmanager.urls");
    let off = no_am.replacen(
        "[enforcement]\nenabled = true",
        "[enforcement]\nenabled = false",
        1,
    );
    assert!(load(&off, &[]).unwrap().enforcement.is_none());
}

#[test]
fn enforcement_problems_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "tighten_factor = \"0.5\"",
            "tighten_factor = \"1.5\"",
            "enforcement.tighten_factor",
        ),
        (
            "hysteresis_percent = \"5\"",
            "hysteresis_percent = \"five\"",
            "enforcement.hysteresis_percent",
        ),
        (
            "trailing_days = 7",
            "trailing_days = 0",
            "enforcement.trailing_days",
        ),
        (
            "interval_seconds = 60",
            "interval_seconds = 0",
            "enforcement.interval_seconds",
        ),
        (
            "max_lag_seconds = 1800",
            "max_lag_seconds = 1",
            "enforcement.max_lag_seconds",
        ),
        (
            "tenant_label = \"tenant\"\ntimeout_ms = 5000",
            "tenant_label = \"tenant\"\ntimeout_ms = 0",
            "kubernetes.timeout_ms",
        ),
        (
            "keepalive_seconds = 15",
            "keepalive_seconds = 1",
            "leader.keepalive_seconds",
        ),
        (
            "retry_seconds = 5",
            "retry_seconds = 0",
            "leader.retry_seconds",
        ),
        (
            "max_attempts = 3\ninitial_backoff_ms = 200\nmax_backoff_ms = 2000",
            "max_attempts = 0\ninitial_backoff_ms = 200\nmax_backoff_ms = 2000",
            "alertmanager.max_attempts",
        ),
        (
            "api_url = \"http://127.0.0.1:8001\"",
            "api_url = \"file:///x\"",
            "kubernetes.api_url",
        ),
        (
            "# api_url = \"https://budgetd.example.com\"",
            "api_url = \"budgetd.example.com\"",
            "enforcement.api_url",
        ),
    ];
    for (from, to, key) in cases {
        assert!(EXAMPLE.contains(from), "example lacks {from}");
        let text = EXAMPLE.replacen(from, to, 1);
        let err = load(&text, &[]).expect_err(to);
        assert_eq!(err.key, *key, "{to}: {err}");
        assert!(err.line.is_some(), "{err}");
    }
    let ladder = |step: &str| format!("{EXAMPLE}\n[[enforcement.ladder]]\n{step}\n");
    let ok = load(
        &ladder("at = 90\non = \"actual\"\naction = \"suspend\"\napproval = \"required\""),
        &[],
    )
    .unwrap();
    let steps = ok.enforcement.unwrap().settings.default_ladder;
    assert_eq!(
        steps.steps().len(),
        1,
        "a configured ladder replaces the default"
    );
    for (step, key) in [
        (
            "at = 90\non = \"spend\"\naction = \"notify\"",
            "enforcement.ladder[0].on",
        ),
        (
            "at = 90\non = \"actual\"\naction = \"tighten_quota\"\nprofile = \"nope\"",
            "enforcement.ladder[0].profile",
        ),
        (
            "at = 0\non = \"actual\"\naction = \"notify\"",
            "enforcement.ladder[0].at",
        ),
        (
            "at = 90\non = \"actual\"\nactoin = \"notify\"",
            "enforcement.ladder[0].actoin",
        ),
    ] {
        let text = ladder(step);
        let err = load(&text, &[]).unwrap_err();
        assert_eq!(err.key, key, "{step}");
        let first = step.lines().next().unwrap();
        assert!(
            err.line >= Some(line_of(&text, "[[enforcement.ladder]]")),
            "{err}"
        );
        assert!(err.line <= Some(text.lines().count()), "{err} ({first})");
    }
    let tenant = format!("{EXAMPLE}\n[enforcement.tenant_ladders]\nBad_Id = [{{ at = 100, on = \"actual\", action = \"suspend\" }}]\n");
    let err = load(&tenant, &[]).unwrap_err();
    assert_eq!(err.key, "enforcement.tenant_ladders.Bad_Id");
    assert_eq!(err.line, Some(line_of(&tenant, "Bad_Id")));
}

#[test]
fn tokens_are_validated() {
    let token = |role: &str, tenant: &str| {
        format!(
            "{EXAMPLE}\n[[api.tokens]]\nname = \"t\"\nrole = \"{role}\"\nsha256 = \"{}\"\n{tenant}\n",
            "ab".repeat(32)
        )
    };
    assert!(load(&token("viewer", ""), &[]).is_ok());
    assert!(load(&token("tenant", "tenant = \"acme\""), &[]).is_ok());
    assert_eq!(
        load(&token("tenant", ""), &[]).unwrap_err().key,
        "api.tokens[0].role"
    );
    assert_eq!(
        load(&token("viewer", "tenant = \"acme\""), &[])
            .unwrap_err()
            .key,
        "api.tokens[0].role"
    );
    assert_eq!(
        load(&token("root", ""), &[]).unwrap_err().key,
        "api.tokens[0].role"
    );
    assert_eq!(
        load(&token("tenant", "tenant = \"Bad\""), &[])
            .unwrap_err()
            .key,
        "api.tokens[0].tenant"
    );
    let bad_hash =
        format!("{EXAMPLE}\n[[api.tokens]]\nname = \"t\"\nrole = \"viewer\"\nsha256 = \"xyz\"\n");
    let err = load(&bad_hash, &[]).unwrap_err();
    assert_eq!(err.key, "api.tokens[0].sha256");
    assert_eq!(err.line, Some(line_of(&bad_hash, "sha256 = \"xyz\"")));
}

/// The alert links' base URL comes from api.listen unless enforcement.api_url is set; an
/// unspecified address becomes loopback, with a warning.
#[test]
fn the_api_url_of_alert_links_is_derived_from_api_listen() {
    let api_url = |env: &[(&str, &str)]| {
        let config = load(EXAMPLE, env).unwrap();
        let url = config
            .enforcement
            .as_ref()
            .unwrap()
            .settings
            .api_url
            .clone();
        (url.unwrap(), config.warnings())
    };
    let (url, warnings) = api_url(&[]);
    assert_eq!(url, "http://127.0.0.1:8080/");
    assert!(warnings.is_empty(), "{warnings:?}");
    let (url, _) = api_url(&[("BUDGETD_API_LISTEN", "10.1.2.3:9123")]);
    assert_eq!(url, "http://10.1.2.3:9123/");
    let (url, warnings) = api_url(&[("BUDGETD_API_LISTEN", "0.0.0.0:9000")]);
    assert_eq!(url, "http://127.0.0.1:9000/");
    assert!(
        warnings[0].contains("set enforcement.api_url"),
        "{warnings:?}"
    );
    let (url, _) = api_url(&[("BUDGETD_API_LISTEN", "[::]:9000")]);
    assert_eq!(url, "http://[::1]:9000/");
    let set = EXAMPLE.replacen(
        "# api_url = \"https://budgetd.example.com\"",
        "api_url = \"https://budgetd.example.com\"",
        1,
    );
    let config = load(&set, &[("BUDGETD_API_LISTEN", "0.0.0.0:9000")]).unwrap();
    assert_eq!(
        config.enforcement.unwrap().settings.api_url.as_deref(),
        Some("https://budgetd.example.com/")
    );
}

#[test]
fn without_meters_the_collector_uses_its_built_in_ones() {
    assert!(
        !EXAMPLE.contains("\n[[meters]]"),
        "the example shows one commented out"
    );
    let config = load(EXAMPLE, &[]).unwrap();
    let meters = &config.collector.unwrap().collector.meters;
    let names: Vec<&str> = meters.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["cpu", "memory", "storage", "network_egress", "gpu"]);
    // The example's commented meter, uncommented, replaces them all.
    let start = EXAMPLE.find("# [[meters]]").unwrap();
    let end = start + EXAMPLE[start..].find("# \"\"\"\n").unwrap() + "# \"\"\"\n".len();
    let meter: String = EXAMPLE[start..end]
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or("")))
        .collect();
    let config = load(&format!("{EXAMPLE}\n{meter}"), &[]).unwrap();
    let meters = &config.collector.unwrap().collector.meters;
    assert_eq!(meters.len(), 1);
    assert_eq!(meters[0].name.as_str(), "cpu");
    assert!(format!("{:?}", meters[0].query).contains("increase(container_cpu_usage_seconds_total"));
}

/// `config show`: every default printed, environment values marked, passwords redacted, and
/// the output is a configuration that loads to the same.
#[test]
fn config_show_prints_the_effective_configuration_and_loads_again() {
    let env = [
        (
            "BUDGETD_DATABASE_URL",
            "postgres://budgetd:s3cret@db.example:5432/ledger",
        ),
        (
            "BUDGETD_ALERTMANAGER_URL",
            "http://am-0:9093,http://am-1:9093",
        ),
        ("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", "bootstrap-token-s3cret"),
    ];
    let text = EXAMPLE.replacen("max_connections = 10\n", "", 1).replacen(
        "url = \"postgres://budgetd@",
        "url = \"postgres://budgetd:file-s3cret@",
        1,
    );
    assert!(text.contains("file-s3cret"));
    let config = load(&text, &env).unwrap();
    assert!(!format!("{config:?}").contains("s3cret"));
    let shown = config.show();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains(
            "url = \"postgres://budgetd:***@db.example:5432/ledger\" # from BUDGETD_DATABASE_URL\n"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("# from BUDGETD_ALERTMANAGER_URL\n"),
        "{shown}"
    );
    assert!(
        shown.contains("\nmax_connections = 10\n"),
        "the default: {shown}"
    );
    assert!(
        shown.contains("# migrate_url: not set, so database.url"),
        "{shown}"
    );
    assert!(
        shown.contains("# api_url: not set, so http://127.0.0.1:8080/"),
        "{shown}"
    );
    assert!(shown.contains("bootstrap-admin (not shown)"), "{shown}");
    assert!(
        shown.contains("[[meters]]\nname = \"cpu\""),
        "the built-in meters: {shown}"
    );

    let reloaded = load(&shown, &[]).unwrap();
    let again = reloaded.show();
    // The same, but for the comments: values from the environment are the file's now.
    let unmarked = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.find(" # from BUDGETD_") {
                Some(i) => format!("{}\n", &l[..i]),
                None => format!("{l}\n"),
            })
            .collect()
    };
    assert_eq!(unmarked(&again), unmarked(&shown));
    assert_eq!(reloaded.database.max_connections, 10);
    assert_eq!(reloaded.enforcement.unwrap().alertmanager.urls.len(), 2);

    // From the environment alone: every section with its defaults, the components off.
    let shown = from_env(&[DB]).unwrap().show();
    for line in [
        "[database]",
        "acquire_timeout_ms = 5000",
        "[api]",
        "listen = \"127.0.0.1:8080\"",
        "[leader]",
        "keepalive_seconds = 15",
        "[log]",
        "[collector]\n# not in the configuration, so the collector is off; its defaults, should it be switched on:\nenabled = false\n",
        "scrape_interval_seconds = 30",
        "[collector.retry]",
        "[prometheus]\n# url: required when the collector is enabled",
        "max_response_bytes = 67108864",
        "[enforcement]\n# not in the configuration, so the enforcer is off; its defaults, should it be switched on:\nenabled = false\n",
        "[kubernetes]",
        "[alertmanager]\n# urls: required when enforcing",
    ] {
        assert!(shown.contains(line), "no {line:?} in:\n{shown}");
    }
    assert!(!shown.contains("[[meters]]"), "no collector, no meters");
    let reloaded = load(&shown, &[]).unwrap();
    assert!(reloaded.collector.is_none() && reloaded.enforcement.is_none());
}

/// README's configuration table states every default `config show` prints, as printed.
#[test]
fn the_readme_states_every_default() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let documented: BTreeMap<&str, &str> = section
        .lines()
        .filter_map(|l| {
            let mut cells = l.strip_prefix("| `")?.split(" | ");
            let key = cells.next()?.strip_suffix('`')?;
            Some((key, cells.next()?))
        })
        .collect();
    // Every component on, nothing but the required values set: all the defaults.
    let env = [
        DB,
        ("BUDGETD_PROMETHEUS_URL", "http://prometheus:9090"),
        ("BUDGETD_ALERTMANAGER_URL", "http://alertmanager:9093"),
    ];
    let shown = load(
        "[collector]\n[enforcement]\n[kafka]\nbootstrap_servers = \"kafka:9092\"\n\
         [grafana]\nurl = \"http://grafana:3000\"\ntoken = \"glsa\"\n\
         [grafana.datasource]\nhost = \"db:5432\"\ndatabase = \"budgetd\"\n\
         [archive]\nurl = \"s3://bucket/ledger\"\n",
        &env,
    )
    .unwrap()
    .show();
    let shown: toml::Table = shown.parse().unwrap();
    let mut checked = 0;
    let mut check = |prefix: String, table: &toml::Table| {
        for (key, value) in table {
            let key = format!("{prefix}.{key}");
            if matches!(value, toml::Value::Table(_))
                || key.ends_with("url")
                || key.ends_with("urls")
                || key == "kafka.bootstrap_servers"
                || key == "grafana.token"
                || key == "grafana.datasource.host"
                || key == "grafana.datasource.database"
            {
                continue;
            }
            let default = documented
                .get(key.as_str())
                .unwrap_or_else(|| panic!("README has no row for {key}"));
            assert_eq!(*default, format!("`{value}`"), "{key}");
            checked += 1;
        }
    };
    for (name, section) in &shown {
        if let toml::Value::Table(table) = section {
            check(name.clone(), table);
            if let Some(toml::Value::Table(retry)) = table.get("retry") {
                check(format!("{name}.retry"), retry);
            }
            if let Some(toml::Value::Table(relay)) = table.get("relay") {
                check(format!("{name}.relay"), relay);
            }
            if let Some(toml::Value::Table(datasource)) = table.get("datasource") {
                check(format!("{name}.datasource"), datasource);
            }
        }
    }
    assert!(checked > 40, "{checked} defaults checked");
}

#[test]
fn the_api_limits_have_defaults_and_bounds() {
    let config = from_env(&[DB]).unwrap();
    assert_eq!(config.api.max_connections, 512);
    assert_eq!(config.api.header_timeout, Duration::from_secs(5));
    assert_eq!(config.api.body_timeout, Duration::from_secs(5));
    assert_eq!(config.api.readiness_timeout, Duration::from_millis(800));
    assert_eq!(config.database.probe_timeout, Duration::from_millis(500));

    let with = |from: &str, to: &str| {
        assert!(EXAMPLE.contains(from), "the example has {from:?}");
        load(&EXAMPLE.replacen(from, to, 1), &[]).unwrap_err()
    };
    let err = with("max_connections = 512", "max_connections = 0");
    assert_eq!(err.key, "api.max_connections");
    // Seconds written as milliseconds.
    let err = with("header_timeout_ms = 5000", "header_timeout_ms = 5");
    assert_eq!(err.key, "api.header_timeout_ms");
    let err = with("readiness_timeout_ms = 800", "readiness_timeout_ms = 1");
    assert_eq!(err.key, "api.readiness_timeout_ms");
    let err = with("probe_timeout_ms = 500", "probe_timeout_ms = 5");
    assert_eq!(err.key, "database.probe_timeout_ms");
    // A body may not take longer than the whole request may.
    let err = with("body_timeout_ms = 5000", "body_timeout_ms = 20000");
    assert_eq!(err.key, "api.body_timeout_ms");
    assert!(err.message.contains("api.request_timeout_ms"), "{err}");
}

#[test]
fn oidc_issuers_are_read_checked_and_shown() {
    let text = "[oidc]\nleeway_seconds = 30\n\n[[oidc.issuers]]\nissuer = \"https://kc.example.com/realms/platform\"\naudience = \"budgetd\"\nroles_claim = \"realm_access.roles\"\ntenant_claim = \"tenant\"\n\n[oidc.issuers.roles]\nbudgetd-admin = \"admin\"\nbudgetd-tenant = \"tenant\"\nacme-owners = \"tenant:acme\"\n";
    let config = load(text, &[DB]).unwrap();
    assert_eq!(config.oidc.leeway_seconds, 30);
    assert_eq!(config.oidc.refetch_interval, Duration::from_secs(60));
    let issuer = &config.oidc.issuers[0];
    assert_eq!(
        issuer.discovery_url.as_str(),
        "https://kc.example.com/realms/platform/.well-known/openid-configuration"
    );
    assert_eq!(issuer.roles.len(), 3);
    // `config show` prints the issuers as given, and what it prints loads again.
    let shown = config.show();
    assert!(shown.contains("[[oidc.issuers]]"), "{shown}");
    let reloaded = load(&shown, &[DB]).unwrap();
    assert_eq!(reloaded.oidc.issuers[0].roles, issuer.roles);

    for (bad, key) in [
        (
            text.replace("\"tenant:acme\"", "\"root\""),
            "oidc.issuers[0].roles.acme-owners",
        ),
        (
            text.replace("https://kc.example.com", "http://kc.example.com"),
            "oidc.issuers[0].issuer",
        ),
        (
            text.replace(
                "audience = \"budgetd\"\n",
                "audience = \"budgetd\"\nalgorithms = [\"HS256\"]\n",
            ),
            "oidc.issuers[0].algorithms",
        ),
        (
            text.replace("leeway_seconds = 30", "leeway_seconds = 3600"),
            "oidc.leeway_seconds",
        ),
        (text.replace("roles_claim", "role_claim"), "oidc.issuers"),
    ] {
        let err = load(&bad, &[DB]).unwrap_err();
        assert!(err.key.starts_with(key), "{bad}\n{err}");
    }
}
