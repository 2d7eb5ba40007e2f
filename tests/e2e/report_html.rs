//! `budgetd report costs --format html` on a seeded ledger: the page's numbers are
//! `finance.tenant_costs_daily`'s and the ledger's budget status, the page is self-contained,
//! headless Chromium renders it into a screenshot with the charts' colours, and bad input
//! fails like the other formats, with nothing written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use ledger::audit::{Actor, AuditContext};
use ledger::budget::{BudgetPeriod, NewBudget, Thresholds};
use ledger::currency::Currency;
use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::money::{round_to_minor_units, Money};
use ledger::price_book::{MeterName, NewPriceBookVersion, PriceBookVersion};
use ledger::tenant::{DataResidency, DisplayName, Labels, NewTenant, Owner, TenantId};
use ledger::usage::{CollectedWindow, CommitMode};
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection};
use testkit::db::TestDb;

use budgetd::report_html::{status_instant, METER_COLOURS};

use crate::cli::run;

const FROM: &str = "2026-03-01";
const TO: &str = "2026-03-31";
/// Acme's display name: every character HTML gives a meaning to.
const ACME_NAME: &str = "Acme <Corp> & \"Sons\" 'Ltd'";
const GIB: i64 = 1 << 30;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn eur() -> Currency {
    Currency::parse("currency", "EUR").unwrap()
}

fn ctx() -> AuditContext {
    AuditContext {
        actor: Actor::system("test"),
        request_id: "report-html-test".into(),
    }
}

fn budgetd(db_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_budgetd"));
    cmd.env(
        "BUDGETD_CONFIG",
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/budgetd.toml"),
    )
    .env("BUDGETD_DATABASE_URL", db_url)
    .env("BUDGETD_MIGRATE_DATABASE_URL", db_url)
    .env_remove("BUDGETD_BOOTSTRAP_ADMIN_TOKEN")
    .stdin(Stdio::null());
    cmd
}

/// `report costs --format html` for March 2026 with `more` arguments.
fn html_report(db_url: &str, more: &[&str]) -> String {
    let (code, stdout, stderr) = run(budgetd(db_url)
        .args([
            "report", "costs", "--from", FROM, "--to", TO, "--format", "html",
        ])
        .args(more));
    assert_eq!(code, 0, "{stderr}");
    stdout
}

async fn add_tenant(db: &TestDb, id: &str, name: &str) {
    let new = NewTenant {
        id: TenantId::parse(id).unwrap(),
        display_name: DisplayName::parse(name).unwrap(),
        owner: Owner::parse("ops@example.com").unwrap(),
        data_residency: DataResidency::parse("eu").unwrap(),
        labels: Labels::default(),
        owner_group: None,
        quota_profile: None,
        namespaces: Vec::new(),
    };
    db.store.create_tenant(&ctx(), &new).await.unwrap();
}

/// The meters of the seeded ledger: name, measured unit, price unit, units per price unit.
fn meters() -> [(&'static str, &'static str, &'static str, Decimal); 3] {
    [
        ("cpu", "core_seconds", "core_hour", Decimal::from(3600)),
        (
            "memory",
            "byte_seconds",
            "gib_hour",
            Decimal::from(GIB * 3600),
        ),
        ("network_egress", "bytes", "gib", Decimal::from(GIB)),
    ]
}

/// What `tenant` used of `meter` in the window starting at `start`: varied by day and hour so
/// that bars differ, with one zero (a row of amount 0 in the ledger, which gets no bar).
fn quantity(tenant: &str, meter: &str, start: DateTime<Utc>) -> Decimal {
    use chrono::{Datelike, Timelike};
    let day = i64::from(start.day());
    let late = i64::from(start.hour() >= 18);
    let scale = if tenant == "acme" { 1 } else { 3 };
    Decimal::from(match meter {
        "cpu" => 3600 * scale * (day % 3 + 1 + late),
        "memory" => GIB * 3600 * scale * (4 + day % 5 + 2 * late),
        _ if tenant == "globex" && day == 5 => 0,
        _ => GIB / 4 * scale * (day % 2 + 1),
    })
}

/// A price book (EUR, from 2026-01-01: cpu 0.031 per core-hour, memory 0.004 per GiB-hour,
/// egress 0.05 per GiB), tenants `acme` (a monthly budget of 5 EUR) and `globex` (none), and
/// five-minute windows committed as the collector does (watermark advanced): at noon on
/// 2026-02-27 (outside the report) and each day of 2026-03-01..20, and at 18:00 on even days.
async fn seed(db: &TestDb) {
    add_tenant(db, "acme", ACME_NAME).await;
    add_tenant(db, "globex", "Globex").await;
    let version: PriceBookVersion = db
        .store
        .add_price_book_version(
            &ctx(),
            &NewPriceBookVersion::new(
                Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                eur(),
                [
                    (MeterName::parse("m", "cpu").unwrap(), dec("0.031")),
                    (MeterName::parse("m", "memory").unwrap(), dec("0.004")),
                    (
                        MeterName::parse("m", "network_egress").unwrap(),
                        dec("0.05"),
                    ),
                ]
                .into(),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    db.store
        .set_budget(
            &ctx(),
            &TenantId::parse("acme").unwrap(),
            &NewBudget {
                amount: Money {
                    amount: dec("5.00"),
                    currency: eur(),
                },
                period: BudgetPeriod::Monthly,
                thresholds: Thresholds::parse(vec![50, 80, 100]).unwrap(),
                effective_from: Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap(),
            },
        )
        .await
        .unwrap();
    let mut starts = vec![Utc.with_ymd_and_hms(2026, 2, 27, 12, 0, 0).unwrap()];
    for day in 1..=20 {
        starts.push(Utc.with_ymd_and_hms(2026, 3, day, 12, 0, 0).unwrap());
        if day % 2 == 0 {
            starts.push(Utc.with_ymd_and_hms(2026, 3, day, 18, 0, 0).unwrap());
        }
    }
    let windows: Vec<CollectedWindow> = starts
        .into_iter()
        .map(|start| {
            let window = Window::new(start, start + chrono::Duration::seconds(300)).unwrap();
            let mut entries = Vec::new();
            for tenant in ["acme", "globex"] {
                for (meter, unit, price_unit, per) in meters() {
                    let meter_name = MeterName::parse("m", meter).unwrap();
                    let pricing = version
                        .pricing(&meter_name, UnitName::parse("u", price_unit).unwrap(), per)
                        .unwrap();
                    entries.push(
                        NewEntry::new(
                            EntryKey {
                                tenant: TenantId::parse(tenant).unwrap(),
                                meter: meter_name,
                                window,
                            },
                            quantity(tenant, meter, start),
                            UnitName::parse("u", unit).unwrap(),
                            pricing,
                        )
                        .unwrap(),
                    );
                }
            }
            CollectedWindow {
                window,
                entries,
                unallocated: vec![],
                unpriced: vec![],
                complete: true,
                incomplete_tenants: vec![],
                problems: vec![],
            }
        })
        .collect();
    db.store
        .commit_windows(&windows, &CommitMode::Collect, true, "test")
        .await
        .unwrap();
}

type CostKey = (String, NaiveDate, String, String);

/// `finance.tenant_costs_daily` for days in [from, to], summed per tenant, day, meter and
/// currency (over price units) and rounded by the report rule.
async fn view_costs(url: &str, from: &str, to: &str) -> BTreeMap<CostKey, Decimal> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, NaiveDate, String, String, Decimal)> = sqlx::query_as(
        "select tenant_id, day, meter, currency, sum(amount) \
         from finance.tenant_costs_daily \
         where day between $1::date and $2::date group by 1, 2, 3, 4",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(tenant, day, meter, currency, amount)| {
            let c = Currency::parse("currency", &currency).unwrap();
            (
                (tenant, day, meter, currency),
                round_to_minor_units(amount, c),
            )
        })
        .collect()
}

/// One element's start tag, as its attributes (entities decoded), and the text up to the next
/// tag (an SVG element's `<title>` text is that of the element after it).
#[derive(Debug)]
struct Element {
    attrs: BTreeMap<String, String>,
    title: Option<String>,
}

impl Element {
    fn get(&self, name: &str) -> &str {
        self.attrs
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.attrs))
    }

    fn amount(&self, name: &str) -> Decimal {
        Decimal::from_str(self.get(name)).unwrap()
    }

    fn cost_key(&self) -> CostKey {
        (
            self.get("data-tenant").to_owned(),
            NaiveDate::from_str(self.get("data-day")).unwrap(),
            self.get("data-meter").to_owned(),
            self.get("data-currency").to_owned(),
        )
    }
}

fn decode_entities(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Every `<tag ...>` start tag.
fn tags(html: &str, tag: &str) -> Vec<Element> {
    let open = format!("<{tag} ");
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        let end = after.find('>').expect("a closed start tag");
        let mut attrs = BTreeMap::new();
        let mut text = &after[..end];
        while let Some(eq) = text.find("=\"") {
            let name = text[..eq].trim().to_owned();
            let value_end = text[eq + 2..].find('"').expect("a closed attribute value");
            attrs.insert(name, decode_entities(&text[eq + 2..eq + 2 + value_end]));
            text = &text[eq + 2 + value_end + 1..];
        }
        let body = &after[end + 1..];
        let title = body
            .strip_prefix("<title>")
            .and_then(|t| t.split_once("</title>"))
            .map(|(t, _)| decode_entities(t));
        found.push(Element { attrs, title });
        rest = body;
    }
    found
}

/// Every `<tag ...>` with `class` among its classes.
fn elements(html: &str, tag: &str, class: &str) -> Vec<Element> {
    tags(html, tag)
        .into_iter()
        .filter(|e| {
            e.attrs
                .get("class")
                .is_some_and(|c| c.split(' ').any(|c| c == class))
        })
        .collect()
}

/// No script, no style or image from elsewhere, no link out: the page is all there is.
fn assert_self_contained(html: &str) {
    let lower = html.to_ascii_lowercase();
    for banned in [
        "<script",
        "http://",
        "https://",
        "src=",
        "<iframe",
        "<object",
        "<embed",
        "<link",
        "@import",
        "url(",
        "javascript:",
    ] {
        assert!(!lower.contains(banned), "the page holds {banned:?}");
    }
    for link in tags(html, "a") {
        assert!(link.get("href").starts_with('#'), "{:?}", link.attrs);
    }
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.trim_end().ends_with("</html>"));
}

#[tokio::test]
async fn the_html_reports_numbers_are_the_ledgers() {
    let db = testkit::db::fresh_database().await;
    seed(&db).await;
    let html = html_report(&db.url, &[]);
    assert_self_contained(&html);

    // Cost per tenant, day and meter: every row of the view for the period, and nothing else
    // (not 2026-02-27), in the tables; as bars where the amount is not zero.
    let view = view_costs(&db.url, FROM, TO).await;
    assert_eq!(view.len(), 2 * 20 * 3, "{view:?}");
    let zero = (
        "globex".to_owned(),
        NaiveDate::from_ymd_opt(2026, 3, 5).unwrap(),
        "network_egress".to_owned(),
        "EUR".to_owned(),
    );
    assert_eq!(view[&zero], Decimal::ZERO);
    let cells: BTreeMap<CostKey, Decimal> = elements(&html, "td", "cost")
        .iter()
        .map(|e| (e.cost_key(), e.amount("data-amount")))
        .collect();
    assert_eq!(cells, view);
    let bars = elements(&html, "rect", "bar");
    let bar_amounts: BTreeMap<CostKey, Decimal> = bars
        .iter()
        .map(|e| (e.cost_key(), e.amount("data-amount")))
        .collect();
    let nonzero: BTreeMap<CostKey, Decimal> = view
        .iter()
        .filter(|(_, a)| !a.is_zero())
        .map(|(k, a)| (k.clone(), *a))
        .collect();
    assert_eq!(bar_amounts, nonzero);
    assert_eq!(bars.len(), nonzero.len(), "one bar segment per cost");
    for bar in &bars {
        let (tenant, day, meter, currency) = bar.cost_key();
        assert_eq!(
            bar.title.as_deref(),
            Some(
                format!(
                    "{tenant}, {day}, {meter}: {} {currency}",
                    bar.get("data-amount")
                )
                .as_str()
            )
        );
        let height: f64 = bar.get("height").parse().unwrap();
        assert!(height > 0.0, "{:?}", bar.attrs);
    }
    // A meter's bars have one colour, each meter its own.
    let colours: BTreeMap<String, BTreeSet<String>> =
        bars.iter().fold(BTreeMap::new(), |mut m, b| {
            m.entry(b.get("data-meter").to_owned())
                .or_default()
                .insert(b.get("fill").to_owned());
            m
        });
    assert_eq!(
        colours,
        BTreeMap::from([
            (
                "cpu".to_owned(),
                BTreeSet::from([METER_COLOURS[0].to_owned()])
            ),
            (
                "memory".to_owned(),
                BTreeSet::from([METER_COLOURS[1].to_owned()])
            ),
            (
                "network_egress".to_owned(),
                BTreeSet::from([METER_COLOURS[2].to_owned()])
            ),
        ])
    );

    // The period's cost per tenant: the exact sum of the view's rows, rounded once.
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let totals: Vec<(String, String, Decimal)> = sqlx::query_as(
        "select tenant_id, currency, sum(amount) from finance.tenant_costs_daily \
         where day between $1::date and $2::date group by 1, 2 order by 1, 2",
    )
    .bind(FROM)
    .bind(TO)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let rows = elements(&html, "tr", "summary-row");
    let shown: Vec<(String, String, Decimal)> = rows
        .iter()
        .map(|r| {
            (
                r.get("data-tenant").to_owned(),
                r.get("data-currency").to_owned(),
                r.amount("data-cost"),
            )
        })
        .collect();
    let expected: Vec<(String, String, Decimal)> = totals
        .iter()
        .map(|(t, c, a)| (t.clone(), c.clone(), round_to_minor_units(*a, eur())))
        .collect();
    assert_eq!(shown, expected);
    let grand: Decimal = totals.iter().map(|(_, _, a)| *a).sum();
    let footer = elements(&html, "tr", "total");
    assert_eq!(footer.len(), 1);
    assert_eq!(
        footer[0].amount("data-total"),
        round_to_minor_units(grand, eur())
    );

    // Acme against its budget: the ledger's status as of the end of the report's last day.
    let as_of = status_instant(NaiveDate::from_str(TO).unwrap(), Utc::now());
    let status = db
        .store
        .budget_status_of(
            &TenantId::parse("acme").unwrap(),
            as_of,
            &budgetd::api::VIEW_STATUS,
        )
        .await
        .unwrap()
        .expect("acme has a budget");
    let acme = &rows[0];
    assert_eq!(acme.get("data-tenant"), "acme");
    assert_eq!(acme.get("data-budget"), "5.00");
    assert_eq!(
        acme.amount("data-spent"),
        round_to_minor_units(status.spent, eur())
    );
    assert_eq!(
        acme.amount("data-forecast"),
        round_to_minor_units(status.forecast, eur())
    );
    assert_eq!(acme.get("data-state"), status.state.as_str());
    assert_eq!(
        acme.amount("data-percent"),
        status.percent_of_budget(status.spent).unwrap()
    );
    assert_eq!(
        acme.get("data-complete"),
        "false",
        "the data ends on March 20"
    );
    // The budget period is March: its spend is the report's cost, the forecast is above it
    // (ten more days at the trailing rate) and above the budget.
    assert_eq!(acme.amount("data-spent"), acme.amount("data-cost"));
    assert!(status.forecast > status.spent, "{status:?}");
    assert_eq!(status.state.as_str(), "at_risk", "{status:?}");
    let globex = &rows[1];
    assert_eq!(globex.get("data-tenant"), "globex");
    assert!(!globex.attrs.contains_key("data-budget"));
    assert!(html.contains("no budget in force"));

    // Acme's burn-down: the budget, the spend accumulated day by day (the view's per-day sums,
    // ending at the status's spend) and the forecast; none for globex.
    let burns = elements(&html, "svg", "burndown");
    assert_eq!(burns.len(), 1);
    let burn = &burns[0];
    assert_eq!(burn.get("data-tenant"), "acme");
    assert_eq!(burn.get("data-budget"), "5.00");
    assert_eq!(burn.amount("data-spent"), acme.amount("data-spent"));
    assert_eq!(burn.amount("data-forecast"), acme.amount("data-forecast"));
    assert_eq!(
        (burn.get("data-period-start"), burn.get("data-period-end")),
        ("2026-03-01", "2026-04-01")
    );
    let mut per_day: BTreeMap<NaiveDate, Decimal> = BTreeMap::new();
    let exact: Vec<(NaiveDate, Decimal)> = sqlx::query_as(
        "select day, sum(amount) from finance.tenant_costs_daily \
         where tenant_id = 'acme' and day between '2026-03-01' and '2026-03-31' group by 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    per_day.extend(exact);
    let mut cumulative = Decimal::ZERO;
    let expected_points: Vec<Decimal> = per_day
        .values()
        .map(|a| {
            cumulative += a;
            round_to_minor_units(cumulative, eur())
        })
        .collect();
    let points: Vec<Decimal> = elements(&html, "circle", "spend")
        .iter()
        .map(|c| c.amount("data-cumulative"))
        .collect();
    assert_eq!(points, expected_points);
    assert_eq!(elements(&html, "line", "forecast").len(), 1);
    assert_eq!(elements(&html, "line", "budget").len(), 1);

    // Text from the ledger is escaped: acme's display name is shown, not parsed.
    assert!(
        html.contains("Acme &lt;Corp&gt; &amp; &quot;Sons&quot; &#39;Ltd&#39;"),
        "{html}"
    );
    assert!(!html.contains("<Corp>"));

    // One tenant: only its rows.
    let only = html_report(&db.url, &["--tenant", "acme"]);
    assert_self_contained(&only);
    assert!(!only.contains("data-tenant=\"globex\""));
    let acme_cells: BTreeMap<CostKey, Decimal> = elements(&only, "td", "cost")
        .iter()
        .map(|e| (e.cost_key(), e.amount("data-amount")))
        .collect();
    let acme_view: BTreeMap<CostKey, Decimal> = view
        .into_iter()
        .filter(|((t, ..), _)| t == "acme")
        .collect();
    assert_eq!(acme_cells, acme_view);
    assert_eq!(elements(&only, "svg", "burndown").len(), 1);
}

/// `CHROMIUM_BIN` (scripts/lib.sh installs Debian's `chromium`).
fn chromium() -> String {
    let bin = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&bin).exists(),
        "{bin} is missing: run the tests with scripts/test.sh, which installs Debian's chromium"
    );
    bin
}

/// Renders `html` in headless Chromium (no sandbox: CI runs as root) into a PNG of
/// `width`×`height` and decodes it to RGBA.
fn screenshot(html: &str, dir: &Path, width: u32, height: u32) -> (u32, u32, Vec<[u8; 4]>) {
    let page = dir.join("report.html");
    std::fs::write(&page, html).unwrap();
    let png = dir.join("report.png");
    // chromium exits by itself once the screenshot is written; `timeout` bounds a hang.
    let output = Command::new("timeout")
        .args(["--kill-after=10", "120"])
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        // scripts/test.sh's shifted-clock passes preload libfaketime into the tests; a browser
        // decides nothing by date and need not run under it.
        .env_remove("LD_PRELOAD")
        .env_remove("FAKETIME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success() && png.exists(),
        "chromium: {:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut decoder =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    let channels = match frame.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let pixels = buf[..frame.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2], if channels == 4 { p[3] } else { 255 }])
        .collect();
    (frame.width, frame.height, pixels)
}

fn rgb(hex: &str) -> [u8; 3] {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap();
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

#[tokio::test]
async fn headless_chromium_renders_the_report_with_its_charts() {
    let db = testkit::db::fresh_database().await;
    seed(&db).await;
    let html = html_report(&db.url, &[]);
    let dir = std::env::temp_dir().join(format!("budgetd-report-html-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (width, height, pixels) = screenshot(&html, &dir, 1280, 2400);
    assert_eq!((width, height), (1280, 2400));
    assert_eq!(pixels.len(), (width * height) as usize);

    let count = |colour: [u8; 3]| {
        pixels
            .iter()
            .filter(|p| (0..3).all(|i| p[i].abs_diff(colour[i]) <= 3))
            .count()
    };
    let non_white = pixels
        .iter()
        .filter(|p| p[..3].iter().any(|c| *c < 240))
        .count();
    let distinct: BTreeSet<[u8; 3]> = pixels.iter().map(|p| [p[0], p[1], p[2]]).collect();
    assert!(
        non_white > pixels.len() / 50,
        "only {non_white} of {} pixels are not white",
        pixels.len()
    );
    assert!(distinct.len() >= 20, "{} colours", distinct.len());
    // The page is white, not a black or error screen.
    assert!(count([255, 255, 255]) > pixels.len() / 2);
    // Each meter's bars, the budget line and the spend line are on screen.
    for (what, colour) in [
        ("cpu bars", METER_COLOURS[0]),
        ("memory bars", METER_COLOURS[1]),
        ("network_egress bars", METER_COLOURS[2]),
        ("budget line", "#b00020"),
    ] {
        let n = count(rgb(colour));
        assert!(n >= 100, "{what} ({colour}): {n} pixels");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn bad_input_fails_like_the_other_formats_and_writes_nothing() {
    let db = testkit::db::fresh_database().await;
    for (args, code, names) in [
        (
            vec![
                "--from",
                "2026-03-31",
                "--to",
                "2026-03-01",
                "--format",
                "html",
            ],
            2,
            "--to",
        ),
        (
            vec![
                "--from",
                "2026-03-01",
                "--to",
                "2026-03-31",
                "--tenant",
                "Bad!",
                "--format",
                "html",
            ],
            2,
            "--tenant",
        ),
        (
            vec![
                "--from",
                "2026-02-30",
                "--to",
                "2026-03-31",
                "--format",
                "html",
            ],
            2,
            "--from",
        ),
        (
            vec![
                "--from",
                "2026-03-01",
                "--to",
                "2026-03-31",
                "--format",
                "pdf",
            ],
            2,
            "html",
        ),
    ] {
        let (got, stdout, stderr) = run(budgetd(&db.url).args(["report", "costs"]).args(&args));
        assert_eq!(got, code, "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?} wrote {stdout}");
    }
    // The same mistakes in CSV: the same answers.
    let (got, stdout, stderr) = run(budgetd(&db.url).args([
        "report",
        "costs",
        "--from",
        "2026-03-31",
        "--to",
        "2026-03-01",
    ]));
    assert_eq!((got, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("--to"));
    // A database that cannot be reached: exit 1, no half page.
    let held = testkit::tcp_proxy::RefusingPort::new();
    let refused = held.addr().port();
    let (got, stdout, stderr) = run(
        budgetd(&format!("postgres://x@127.0.0.1:{refused}/x")).args([
            "report", "costs", "--from", FROM, "--to", TO, "--format", "html",
        ]),
    );
    assert_eq!(got, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("connection refused"), "{stderr}");
}
