//! The cost report as one self-contained HTML page (`budgetd report costs --format html`): every
//! tenant's cost for the period against its budget, and per tenant a bar chart of the cost per
//! day stacked by meter and a burn-down of its budget period (budget, cumulative spend,
//! forecast). The charts are inline SVG; the page has no script and loads nothing, so that it
//! can be mailed or archived as it is.
//!
//! Every amount shown is a `Decimal` rounded by the report rule (`round_to_minor_units`, half to
//! even; a total is the exact sum rounded once), as in the CSV; only SVG coordinates are `f64`.
//! Every text that comes from the ledger goes through [`escape`]. Every amount is also in a
//! `data-` attribute (and each bar's `<title>`), so that a machine can read the page back.
//!
//! [`HtmlReport::load`] reads the ledger; [`HtmlReport::new`] and [`HtmlReport::render`] are pure.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use ledger::currency::Currency;
use ledger::enforcement::{BudgetStatus, StatusParams};
use ledger::money::{format_amount, round_to_minor_units};
use ledger::store::DailyCost;
use ledger::tenant::TenantId;
use ledger::Store;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

/// Meter colours, in the order of the sorted meter names (Okabe–Ito first: distinguishable
/// with the common colour-vision deficiencies). Past the last, they repeat; the legend and each
/// bar's title still name the meter.
pub const METER_COLOURS: [&str; 10] = [
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#882255", "#44aa99",
    "#999933", "#332288",
];

const BUDGET_COLOUR: &str = "#b00020";
const SPEND_COLOUR: &str = "#0072b2";
const FORECAST_COLOUR: &str = "#e69f00";

/// The instant the budget status is taken at: the end of the report's last day, or `now` if
/// that is earlier (a report on the running month shows the status as it stands).
pub fn status_instant(to: NaiveDate, now: DateTime<Utc>) -> DateTime<Utc> {
    let end_of_to = to
        .and_hms_micro_opt(23, 59, 59, 999_999)
        .expect("a valid time of day")
        .and_utc();
    end_of_to.min(now)
}

/// The report, computed: what [`HtmlReport::render`] writes.
#[derive(Debug)]
pub struct HtmlReport {
    from: NaiveDate,
    to: NaiveDate,
    as_of: DateTime<Utc>,
    generated_at: DateTime<Utc>,
    /// Every meter with a cost in the period, sorted: a meter's colour is its position here.
    meters: Vec<String>,
    tenants: Vec<TenantSection>,
    /// Exact sums per currency.
    currency_totals: BTreeMap<Currency, Decimal>,
}

#[derive(Debug)]
struct TenantSection {
    id: TenantId,
    display_name: Option<String>,
    /// Exact cost per currency, day and meter, for the report's days.
    days: BTreeMap<Currency, BTreeMap<NaiveDate, BTreeMap<String, Decimal>>>,
    burn: Option<BurnDown>,
}

#[derive(Debug)]
struct BurnDown {
    status: BudgetStatus,
    /// Exact spend per day of the budget period, in the budget's currency.
    daily: BTreeMap<NaiveDate, Decimal>,
}

impl TenantSection {
    fn total(&self, currency: Currency) -> Decimal {
        self.days
            .get(&currency)
            .map(|days| days.values().flat_map(|m| m.values()).sum())
            .unwrap_or_default()
    }

    /// The currencies of the summary's rows: those with costs, and the budget's.
    fn currencies(&self) -> BTreeSet<Currency> {
        let mut currencies: BTreeSet<Currency> = self.days.keys().copied().collect();
        if let Some(burn) = &self.burn {
            currencies.insert(burn.status.budget.currency);
        }
        currencies
    }
}

impl HtmlReport {
    /// Reads the report's data: the daily costs of the period and of each budget period, the
    /// budget statuses at [`status_instant`] and the tenants' display names.
    pub async fn load(
        store: &Store,
        tenant: Option<&TenantId>,
        from: NaiveDate,
        to: NaiveDate,
        params: &StatusParams,
        now: DateTime<Utc>,
    ) -> anyhow::Result<HtmlReport> {
        let as_of = status_instant(to, now);
        let statuses = match tenant {
            Some(t) => store
                .budget_status_of(t, as_of, params)
                .await?
                .into_iter()
                .collect(),
            None => store.budget_statuses(as_of, params).await?,
        };
        let day_after = to
            .succ_opt()
            .ok_or_else(|| anyhow::anyhow!("--to is out of range"))?;
        // One read covers the report's days and every budget period.
        let first = statuses
            .iter()
            .map(|s| s.period_start)
            .fold(from, NaiveDate::min);
        let end = statuses
            .iter()
            .map(|s| s.period_end)
            .fold(day_after, NaiveDate::max);
        let costs = store.daily_costs(tenant, first, end).await?;
        let names = store
            .list_tenants(None)
            .await?
            .into_iter()
            .map(|t| (t.id, t.display_name.as_str().to_owned()))
            .collect();
        Ok(HtmlReport::new(
            from, to, as_of, now, &costs, statuses, &names,
        ))
    }

    /// `costs` may hold days outside [from, to] (the budget periods'): the period's sections
    /// take only the period's days, the burn-downs each their budget period's.
    pub fn new(
        from: NaiveDate,
        to: NaiveDate,
        as_of: DateTime<Utc>,
        generated_at: DateTime<Utc>,
        costs: &[DailyCost],
        statuses: Vec<BudgetStatus>,
        display_names: &BTreeMap<TenantId, String>,
    ) -> HtmlReport {
        let mut tenants: BTreeMap<TenantId, TenantSection> = BTreeMap::new();
        let mut meters = BTreeSet::new();
        let mut currency_totals: BTreeMap<Currency, Decimal> = BTreeMap::new();
        for c in costs.iter().filter(|c| (from..=to).contains(&c.day)) {
            meters.insert(c.meter.clone());
            *currency_totals.entry(c.currency).or_default() += c.amount;
            *section(&mut tenants, &c.tenant, display_names)
                .days
                .entry(c.currency)
                .or_default()
                .entry(c.day)
                .or_default()
                .entry(c.meter.clone())
                .or_default() += c.amount;
        }
        for status in statuses {
            let mut daily: BTreeMap<NaiveDate, Decimal> = BTreeMap::new();
            for c in costs.iter().filter(|c| {
                c.tenant == status.tenant
                    && c.currency == status.budget.currency
                    && (status.period_start..status.period_end).contains(&c.day)
            }) {
                *daily.entry(c.day).or_default() += c.amount;
            }
            let tenant = status.tenant.clone();
            section(&mut tenants, &tenant, display_names).burn = Some(BurnDown { status, daily });
        }
        HtmlReport {
            from,
            to,
            as_of,
            generated_at,
            meters: meters.into_iter().collect(),
            tenants: tenants.into_values().collect(),
            currency_totals,
        }
    }

    fn colour(&self, meter: &str) -> &'static str {
        let i = self.meters.iter().position(|m| m == meter).unwrap_or(0);
        METER_COLOURS[i % METER_COLOURS.len()]
    }

    /// The whole page.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let title = format!("Cost report {} to {}", self.from, self.to);
        out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        out.push_str(&format!("<title>{}</title>\n", escape(&title)));
        out.push_str(STYLE);
        out.push_str("</head>\n<body>\n");
        out.push_str(&format!(
            "<h1>{}</h1>\n<p class=\"meta\">Days are UTC, both inclusive. Budget status as of \
             <time data-as-of=\"{as_of}\">{as_of_text}</time>; generated {generated} by budgetd \
             {version}. Amounts are rounded to the currency's minor unit, half to even; totals \
             are the exact sums rounded once, so they can differ from the sum of the rounded \
             figures shown.</p>\n",
            escape(&title),
            as_of = self
                .as_of
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            as_of_text = self.as_of.format("%Y-%m-%d %H:%M:%S UTC"),
            generated = self.generated_at.format("%Y-%m-%d %H:%M:%S UTC"),
            version = env!("CARGO_PKG_VERSION"),
        ));
        self.summary(&mut out);
        for tenant in &self.tenants {
            self.tenant_section(&mut out, tenant);
        }
        out.push_str("</body>\n</html>\n");
        out
    }

    fn summary(&self, out: &mut String) {
        out.push_str("<h2>Cost and budget per tenant</h2>\n");
        if self.tenants.is_empty() {
            out.push_str(
                "<p class=\"empty\">No costs and no budgets were recorded for this period.</p>\n",
            );
            return;
        }
        out.push_str(
            "<table class=\"summary\">\n<thead><tr><th>Tenant</th><th>Cost in period</th>\
             <th>Budget period</th><th>Spent in budget period</th><th>Budget</th>\
             <th>% of budget</th><th>Forecast</th><th>State</th><th>Currency</th></tr></thead>\n\
             <tbody>\n",
        );
        for tenant in &self.tenants {
            for currency in tenant.currencies() {
                let cost = round_to_minor_units(tenant.total(currency), currency);
                let status = tenant
                    .burn
                    .as_ref()
                    .map(|b| &b.status)
                    .filter(|s| s.budget.currency == currency);
                let mut attrs = format!(
                    "data-tenant=\"{}\" data-currency=\"{}\" data-cost=\"{}\"",
                    escape(tenant.id.as_str()),
                    escape(currency.code()),
                    format_amount(cost, currency)
                );
                let budget_cells = match status {
                    Some(s) => {
                        let percent = s.percent_of_budget(s.spent).map(|p| p.normalize());
                        attrs.push_str(&format!(
                            " data-spent=\"{}\" data-budget=\"{}\" data-percent=\"{}\" \
                             data-forecast=\"{}\" data-state=\"{}\" data-complete=\"{}\" \
                             data-period-start=\"{}\" data-period-end=\"{}\"",
                            format_amount(s.spent, currency),
                            format_amount(s.budget.amount, currency),
                            percent.map(|p| p.to_string()).unwrap_or_default(),
                            format_amount(s.forecast, currency),
                            s.state.as_str(),
                            s.complete,
                            s.period_start,
                            s.period_end,
                        ));
                        format!(
                            "<td>{} {} to {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td>",
                            s.period.as_str(),
                            s.period_start,
                            s.period_end.pred_opt().unwrap_or(s.period_end),
                            format_amount(s.spent, currency),
                            format_amount(s.budget.amount, currency),
                            percent.map(|p| format!("{p} %")).unwrap_or_default(),
                            format_amount(s.forecast, currency),
                            state_badge(s),
                        )
                    }
                    None => "<td colspan=\"6\" class=\"none\">no budget in force</td>".to_owned(),
                };
                out.push_str(&format!(
                    "<tr class=\"summary-row\" {attrs}><td><a href=\"#tenant-{id}\">{name}</a></td>\
                     <td class=\"num\">{cost}</td>{budget_cells}<td>{currency}</td></tr>\n",
                    id = escape(tenant.id.as_str()),
                    name = tenant_label(tenant),
                    cost = format_amount(cost, currency),
                    currency = escape(currency.code()),
                ));
            }
        }
        out.push_str("</tbody>\n<tfoot>\n");
        for (currency, total) in &self.currency_totals {
            out.push_str(&format!(
                "<tr class=\"total\" data-currency=\"{c}\" data-total=\"{t}\"><td>Total</td>\
                 <td class=\"num\">{t}</td><td colspan=\"6\"></td><td>{c}</td></tr>\n",
                c = escape(currency.code()),
                t = format_amount(*total, *currency),
            ));
        }
        out.push_str("</tfoot>\n</table>\n");
    }

    fn tenant_section(&self, out: &mut String, tenant: &TenantSection) {
        out.push_str(&format!(
            "<section class=\"tenant\" id=\"tenant-{}\">\n<h2>{}</h2>\n",
            escape(tenant.id.as_str()),
            tenant_label(tenant)
        ));
        if tenant.days.is_empty() {
            out.push_str(&format!(
                "<p class=\"empty\">No costs from {} to {}.</p>\n",
                self.from, self.to
            ));
        }
        for (currency, days) in &tenant.days {
            out.push_str(&format!(
                "<h3>Cost per day by meter ({})</h3>\n",
                escape(currency.code())
            ));
            self.daily_chart(out, tenant, *currency, days);
            self.daily_table(out, tenant, *currency, days);
        }
        match &tenant.burn {
            Some(burn) => {
                let s = &burn.status;
                out.push_str(&format!(
                    "<h3>Budget burn-down: {} period {} to {}</h3>\n",
                    s.period.as_str(),
                    s.period_start,
                    s.period_end.pred_opt().unwrap_or(s.period_end)
                ));
                self.burn_chart(out, tenant, burn);
            }
            None => out.push_str(&format!(
                "<p class=\"none\">No budget in force at {}.</p>\n",
                self.as_of.format("%Y-%m-%d %H:%M UTC")
            )),
        }
        out.push_str("</section>\n");
    }

    /// One bar per day of the period, one segment per meter: costs above zero stack up from the
    /// axis, corrections below zero (a net negative day) stack down from it.
    fn daily_chart(
        &self,
        out: &mut String,
        tenant: &TenantSection,
        currency: Currency,
        days: &BTreeMap<NaiveDate, BTreeMap<String, Decimal>>,
    ) {
        let meters: BTreeSet<&str> = days
            .values()
            .flat_map(|m| m.keys().map(String::as_str))
            .collect();
        let legend = Legend::layout(
            meters
                .iter()
                .map(|m| (self.colour(m), (*m).to_owned(), LegendMark::Box))
                .collect(),
        );
        let (mut lo, mut hi) = (Decimal::ZERO, Decimal::ZERO);
        for amounts in days.values() {
            let up: Decimal = amounts.values().filter(|a| a.is_sign_positive()).sum();
            let down: Decimal = amounts.values().filter(|a| a.is_sign_negative()).sum();
            hi = hi.max(up);
            lo = lo.min(down);
        }
        let scale = Scale::nice(lo, hi);
        let frame = Frame::new(legend.height());
        out.push_str(&format!(
            "<svg class=\"daily\" data-tenant=\"{t}\" data-currency=\"{c}\" viewBox=\"0 0 {w} {h}\" \
             width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"Cost per day by meter, {t}, {c}\">\n",
            t = escape(tenant.id.as_str()),
            c = escape(currency.code()),
            w = WIDTH,
            h = frame.height,
        ));
        frame.y_axis(out, &scale, &format!("{} per day", currency.code()));
        let n = (self.to - self.from).num_days() + 1;
        let band = frame.plot_width() / n as f64;
        let every = label_every(n);
        for (i, day) in self.from.iter_days().take(n as usize).enumerate() {
            let centre = frame.left + band * (i as f64 + 0.5);
            if i as i64 % every == 0 {
                frame.x_label(out, centre, &day.format("%m-%d").to_string());
            }
            let Some(amounts) = days.get(&day) else {
                continue;
            };
            let (mut up, mut down) = (Decimal::ZERO, Decimal::ZERO);
            for (meter, amount) in amounts {
                let shown = round_to_minor_units(*amount, currency);
                if shown.is_zero() {
                    continue;
                }
                let (from, to) = if amount.is_sign_positive() {
                    up += amount;
                    (up - amount, up)
                } else {
                    down += amount;
                    (down - amount, down)
                };
                let (top, bottom) = (frame.y(&scale, from.max(to)), frame.y(&scale, from.min(to)));
                out.push_str(&format!(
                    "<rect class=\"bar\" x=\"{x:.2}\" y=\"{top:.2}\" width=\"{bw:.2}\" height=\"{bh:.2}\" \
                     fill=\"{fill}\" data-tenant=\"{t}\" data-day=\"{day}\" data-meter=\"{m}\" \
                     data-currency=\"{c}\" data-amount=\"{a}\"><title>{t}, {day}, {m}: {a} {c}</title></rect>\n",
                    x = centre - band * 0.35,
                    bw = band * 0.7,
                    bh = bottom - top,
                    fill = self.colour(meter),
                    t = escape(tenant.id.as_str()),
                    m = escape(meter),
                    c = escape(currency.code()),
                    a = format_amount(*amount, currency),
                ));
            }
        }
        frame.x_title(out, "Day (UTC)");
        legend.render(out, frame.legend_top());
        out.push_str("</svg>\n");
    }

    /// The chart's numbers as a table (also for machines: each cell has its `data-` amount).
    fn daily_table(
        &self,
        out: &mut String,
        tenant: &TenantSection,
        currency: Currency,
        days: &BTreeMap<NaiveDate, BTreeMap<String, Decimal>>,
    ) {
        let meters: BTreeSet<&str> = days
            .values()
            .flat_map(|m| m.keys().map(String::as_str))
            .collect();
        out.push_str(&format!(
            "<details><summary>Cost per day by meter as a table</summary>\n\
             <table class=\"daily\" data-tenant=\"{}\" data-currency=\"{}\">\n<thead><tr><th>Day</th>",
            escape(tenant.id.as_str()),
            escape(currency.code())
        ));
        for meter in &meters {
            out.push_str(&format!(
                "<th><span class=\"swatch\" style=\"background:{}\"></span>{}</th>",
                self.colour(meter),
                escape(meter)
            ));
        }
        out.push_str("<th>Total</th></tr></thead>\n<tbody>\n");
        let mut per_meter: BTreeMap<&str, Decimal> = BTreeMap::new();
        for (day, amounts) in days {
            out.push_str(&format!("<tr><td>{day}</td>"));
            for meter in &meters {
                match amounts.get(*meter) {
                    Some(amount) => {
                        *per_meter.entry(meter).or_default() += amount;
                        out.push_str(&format!(
                            "<td class=\"num cost\" data-tenant=\"{t}\" data-day=\"{day}\" \
                             data-meter=\"{m}\" data-currency=\"{c}\" data-amount=\"{a}\">{a}</td>",
                            t = escape(tenant.id.as_str()),
                            m = escape(meter),
                            c = escape(currency.code()),
                            a = format_amount(*amount, currency),
                        ));
                    }
                    None => out.push_str("<td></td>"),
                }
            }
            out.push_str(&format!(
                "<td class=\"num\">{}</td></tr>\n",
                format_amount(amounts.values().sum(), currency)
            ));
        }
        out.push_str("</tbody>\n<tfoot><tr><td>Total</td>");
        for meter in &meters {
            out.push_str(&format!(
                "<td class=\"num\">{}</td>",
                format_amount(per_meter[meter], currency)
            ));
        }
        out.push_str(&format!(
            "<td class=\"num\">{}</td></tr></tfoot>\n</table>\n</details>\n",
            format_amount(tenant.total(currency), currency)
        ));
    }

    /// The budget period: the budget (and its thresholds), the spend accumulated day by day up to
    /// the last data, and the forecast from there to the period's end.
    fn burn_chart(&self, out: &mut String, tenant: &TenantSection, burn: &BurnDown) {
        let s = &burn.status;
        let currency = s.budget.currency;
        let start = midnight(s.period_start);
        let end = midnight(s.period_end);
        let last_data_day = burn
            .daily
            .keys()
            .next_back()
            .map(|d| midnight(*d) + chrono::Days::new(1));
        // Where the spend line ends and the forecast starts: the last collected window's end.
        let cut = s
            .data_until
            .or(last_data_day)
            .unwrap_or(start)
            .clamp(start, end);
        let mut points = vec![(start, Decimal::ZERO)];
        let mut cumulative = Decimal::ZERO;
        for (day, amount) in &burn.daily {
            cumulative += amount;
            let day_end = midnight(*day) + chrono::Days::new(1);
            if day_end < cut {
                points.push((day_end, cumulative));
            }
        }
        points.push((cut, cumulative));
        let hi = [s.budget.amount, s.forecast, s.spent, cumulative]
            .into_iter()
            .fold(Decimal::ZERO, Decimal::max);
        let lo = points
            .iter()
            .map(|(_, v)| *v)
            .fold(Decimal::ZERO, Decimal::min);
        let scale = Scale::nice(lo, hi);
        let draws_forecast = cut < end;
        let mut items = vec![
            (
                BUDGET_COLOUR,
                format!(
                    "budget {} {}",
                    format_amount(s.budget.amount, currency),
                    currency.code()
                ),
                LegendMark::Line,
            ),
            (
                SPEND_COLOUR,
                format!(
                    "spent {} {}",
                    format_amount(cumulative, currency),
                    currency.code()
                ),
                LegendMark::Line,
            ),
        ];
        if draws_forecast {
            items.push((
                FORECAST_COLOUR,
                format!(
                    "forecast {} {}",
                    format_amount(s.forecast, currency),
                    currency.code()
                ),
                LegendMark::Dashed,
            ));
        }
        let legend = Legend::layout(items);
        let frame = Frame::new(legend.height());
        out.push_str(&format!(
            "<svg class=\"burndown\" data-tenant=\"{t}\" data-currency=\"{c}\" data-budget=\"{b}\" \
             data-spent=\"{sp}\" data-forecast=\"{f}\" data-period-start=\"{ps}\" data-period-end=\"{pe}\" \
             viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" \
             aria-label=\"Budget burn-down, {t}, {c}\">\n",
            t = escape(tenant.id.as_str()),
            c = escape(currency.code()),
            b = format_amount(s.budget.amount, currency),
            sp = format_amount(cumulative, currency),
            f = format_amount(s.forecast, currency),
            ps = s.period_start,
            pe = s.period_end,
            w = WIDTH,
            h = frame.height,
        ));
        frame.y_axis(out, &scale, currency.code());
        let span = (end - start).num_seconds().max(1) as f64;
        let x = |t: DateTime<Utc>| {
            frame.left + frame.plot_width() * (t - start).num_seconds() as f64 / span
        };
        let n = (s.period_end - s.period_start).num_days();
        let every = label_every(n);
        for (i, day) in s.period_start.iter_days().take(n as usize).enumerate() {
            if i as i64 % every == 0 {
                frame.x_label(
                    out,
                    x(midnight(day) + chrono::Duration::hours(12)),
                    &day.format("%m-%d").to_string(),
                );
            }
        }
        // Thresholds below the budget, faintly; the budget itself, boldly.
        for percent in s.thresholds.as_slice().iter().filter(|p| **p < 100) {
            let y = frame.y(
                &scale,
                s.budget.amount * Decimal::from(*percent) / Decimal::ONE_HUNDRED,
            );
            out.push_str(&format!(
                "<line class=\"threshold\" x1=\"{l:.2}\" x2=\"{r:.2}\" y1=\"{y:.2}\" y2=\"{y:.2}\" \
                 stroke=\"{BUDGET_COLOUR}\" stroke-opacity=\"0.35\" stroke-dasharray=\"2 3\"/>\
                 <text class=\"note\" x=\"{tx:.2}\" y=\"{ty:.2}\" text-anchor=\"end\">{percent} %</text>\n",
                l = frame.left,
                r = frame.right(),
                tx = frame.right() - 4.0,
                ty = y - 3.0,
            ));
        }
        let y = frame.y(&scale, s.budget.amount);
        out.push_str(&format!(
            "<line class=\"budget\" x1=\"{l:.2}\" x2=\"{r:.2}\" y1=\"{y:.2}\" y2=\"{y:.2}\" \
             stroke=\"{BUDGET_COLOUR}\" stroke-width=\"2\"><title>budget {b} {c}</title></line>\n",
            l = frame.left,
            r = frame.right(),
            b = format_amount(s.budget.amount, currency),
            c = escape(currency.code()),
        ));
        let polyline: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.2},{:.2}", x(*t), frame.y(&scale, *v)))
            .collect();
        out.push_str(&format!(
            "<polyline class=\"spend\" points=\"{}\" fill=\"none\" stroke=\"{SPEND_COLOUR}\" \
             stroke-width=\"2.5\"/>\n",
            polyline.join(" ")
        ));
        for (t, v) in points.iter().skip(1) {
            out.push_str(&format!(
                "<circle class=\"spend\" cx=\"{:.2}\" cy=\"{:.2}\" r=\"2.5\" fill=\"{SPEND_COLOUR}\" \
                 data-at=\"{at}\" data-cumulative=\"{a}\"><title>{at}: {a} {c} spent</title></circle>\n",
                x(*t),
                frame.y(&scale, *v),
                at = t.format("%Y-%m-%d %H:%M UTC"),
                a = format_amount(*v, currency),
                c = escape(currency.code()),
            ));
        }
        if draws_forecast {
            out.push_str(&format!(
                "<line class=\"forecast\" x1=\"{:.2}\" y1=\"{:.2}\" x2=\"{:.2}\" y2=\"{:.2}\" \
                 stroke=\"{FORECAST_COLOUR}\" stroke-width=\"2.5\" stroke-dasharray=\"6 4\">\
                 <title>forecast {f} {c} at the period's end</title></line>\n",
                x(cut),
                frame.y(&scale, s.spent),
                x(end),
                frame.y(&scale, s.forecast),
                f = format_amount(s.forecast, currency),
                c = escape(currency.code()),
            ));
        }
        frame.x_title(out, "Day of the budget period (UTC)");
        legend.render(out, frame.legend_top());
        out.push_str("</svg>\n");
        if !s.complete {
            out.push_str(
                "<p class=\"note\">The data behind this status is incomplete (windows missing, \
                 late or not priced), so spend and forecast may be low.</p>\n",
            );
        }
    }
}

/// The tenant's section, created on first use.
fn section<'a>(
    tenants: &'a mut BTreeMap<TenantId, TenantSection>,
    id: &TenantId,
    display_names: &BTreeMap<TenantId, String>,
) -> &'a mut TenantSection {
    tenants.entry(id.clone()).or_insert_with(|| TenantSection {
        id: id.clone(),
        display_name: display_names.get(id).cloned(),
        days: BTreeMap::new(),
        burn: None,
    })
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

/// The display name with the id, escaped.
fn tenant_label(tenant: &TenantSection) -> String {
    match &tenant.display_name {
        Some(name) if name != tenant.id.as_str() => format!(
            "{} <span class=\"id\">{}</span>",
            escape(name),
            escape(tenant.id.as_str())
        ),
        _ => escape(tenant.id.as_str()),
    }
}

fn state_badge(s: &BudgetStatus) -> String {
    let state = s.state.as_str();
    let incomplete = if s.complete {
        ""
    } else {
        " <span class=\"incomplete\">data incomplete</span>"
    };
    format!(
        "<span class=\"state {state}\">{}</span>{incomplete}",
        state.replace('_', " ")
    )
}

/// Text for HTML, in element content and in quoted attribute values alike.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Label one day in `every` so that at most about 12 labels share an axis.
fn label_every(days: i64) -> i64 {
    (days + 11) / 12
}

/// An axis from `lo` to `hi` in steps of 1, 2 or 5 times a power of ten, with zero on a tick.
/// Decimal, so that the tick labels are exact.
#[derive(Debug, PartialEq, Eq)]
struct Scale {
    lo: Decimal,
    hi: Decimal,
    step: Decimal,
}

impl Scale {
    /// About five steps covering `[lo, hi]` (`lo <= 0 <= hi`).
    fn nice(lo: Decimal, hi: Decimal) -> Scale {
        let span = hi - lo;
        if span <= Decimal::ZERO {
            return Scale {
                lo: Decimal::ZERO,
                hi: Decimal::ONE,
                step: Decimal::new(2, 1),
            };
        }
        let raw = span / Decimal::from(5);
        let ten = Decimal::TEN;
        let mut power = Decimal::ONE;
        while power > raw {
            power /= ten;
        }
        while power * ten <= raw {
            power *= ten;
        }
        let step = [1, 2, 5, 10]
            .into_iter()
            .map(|m| power * Decimal::from(m))
            .find(|s| *s >= raw)
            .unwrap_or(power * ten);
        Scale {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
        }
    }

    fn ticks(&self) -> impl Iterator<Item = Decimal> + '_ {
        std::iter::successors(Some(self.lo), move |t| Some(*t + self.step))
            .take_while(move |t| *t <= self.hi)
    }
}

const WIDTH: f64 = 820.0;
const PLOT_HEIGHT: f64 = 220.0;

/// A chart's plot area: y axis on the left, x labels and title below, the legend under them.
struct Frame {
    left: f64,
    top: f64,
    height: f64,
}

impl Frame {
    fn new(legend_height: f64) -> Frame {
        let top = 16.0;
        Frame {
            left: 84.0,
            top,
            height: top + PLOT_HEIGHT + 48.0 + legend_height + 8.0,
        }
    }

    fn right(&self) -> f64 {
        WIDTH - 16.0
    }

    fn plot_width(&self) -> f64 {
        self.right() - self.left
    }

    fn bottom(&self) -> f64 {
        self.top + PLOT_HEIGHT
    }

    fn legend_top(&self) -> f64 {
        self.bottom() + 48.0
    }

    fn y(&self, scale: &Scale, value: Decimal) -> f64 {
        let share = ((scale.hi - value) / (scale.hi - scale.lo))
            .to_f64()
            .unwrap_or(0.0);
        self.top + PLOT_HEIGHT * share
    }

    /// Grid lines with their labels, the zero line, and the axis title.
    fn y_axis(&self, out: &mut String, scale: &Scale, title: &str) {
        for tick in scale.ticks() {
            let y = self.y(scale, tick);
            let class = if tick.is_zero() { "axis" } else { "grid" };
            out.push_str(&format!(
                "<line class=\"{class}\" x1=\"{l:.2}\" x2=\"{r:.2}\" y1=\"{y:.2}\" y2=\"{y:.2}\"/>\
                 <text class=\"tick\" x=\"{tx:.2}\" y=\"{ty:.2}\" text-anchor=\"end\">{tick}</text>\n",
                l = self.left,
                r = self.right(),
                tx = self.left - 6.0,
                ty = y + 4.0,
                tick = tick.normalize(),
            ));
        }
        out.push_str(&format!(
            "<text class=\"axis-title\" transform=\"translate(16 {:.2}) rotate(-90)\" \
             text-anchor=\"middle\">{}</text>\n",
            self.top + PLOT_HEIGHT / 2.0,
            escape(title)
        ));
    }

    fn x_label(&self, out: &mut String, x: f64, text: &str) {
        out.push_str(&format!(
            "<text class=\"tick\" x=\"{x:.2}\" y=\"{:.2}\" text-anchor=\"middle\">{}</text>\n",
            self.bottom() + 16.0,
            escape(text)
        ));
    }

    fn x_title(&self, out: &mut String, title: &str) {
        out.push_str(&format!(
            "<text class=\"axis-title\" x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\">{}</text>\n",
            self.left + self.plot_width() / 2.0,
            self.bottom() + 36.0,
            escape(title)
        ));
    }
}

#[derive(Debug, Clone, Copy)]
enum LegendMark {
    Box,
    Line,
    Dashed,
}

/// Legend entries in rows that wrap at the chart's width.
struct Legend {
    items: Vec<(f64, f64, &'static str, String, LegendMark)>,
    rows: usize,
}

impl Legend {
    const ROW: f64 = 18.0;

    fn layout(entries: Vec<(&'static str, String, LegendMark)>) -> Legend {
        let (left, right) = (84.0, WIDTH - 16.0);
        let (mut x, mut row) = (left, 0usize);
        let mut items = Vec::new();
        for (colour, text, mark) in entries {
            // About 7 px per character at the legend's 12 px.
            let width = 26.0 + 7.0 * text.chars().count() as f64 + 18.0;
            if x + width > right && x > left {
                x = left;
                row += 1;
            }
            items.push((x, row as f64 * Self::ROW, colour, text, mark));
            x += width;
        }
        Legend {
            rows: if items.is_empty() { 0 } else { row + 1 },
            items,
        }
    }

    fn height(&self) -> f64 {
        self.rows as f64 * Self::ROW
    }

    fn render(&self, out: &mut String, top: f64) {
        for (x, dy, colour, text, mark) in &self.items {
            let y = top + dy;
            let swatch = match mark {
                LegendMark::Box => format!(
                    "<rect x=\"{x:.2}\" y=\"{:.2}\" width=\"18\" height=\"12\" fill=\"{colour}\"/>",
                    y
                ),
                LegendMark::Line => format!(
                    "<line x1=\"{x:.2}\" x2=\"{:.2}\" y1=\"{m:.2}\" y2=\"{m:.2}\" stroke=\"{colour}\" stroke-width=\"2.5\"/>",
                    x + 18.0,
                    m = y + 6.0
                ),
                LegendMark::Dashed => format!(
                    "<line x1=\"{x:.2}\" x2=\"{:.2}\" y1=\"{m:.2}\" y2=\"{m:.2}\" stroke=\"{colour}\" stroke-width=\"2.5\" stroke-dasharray=\"6 4\"/>",
                    x + 18.0,
                    m = y + 6.0
                ),
            };
            out.push_str(&format!(
                "<g class=\"legend\">{swatch}<text x=\"{:.2}\" y=\"{:.2}\">{}</text></g>\n",
                x + 26.0,
                y + 11.0,
                escape(text)
            ));
        }
    }
}

/// The page's only style: inline, system fonts, nothing fetched.
const STYLE: &str = "<style>
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif;
       margin: 24px; color: #1b1b1b; background: #ffffff; max-width: 1100px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta, .note { color: #555555; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #dddddd; padding: 4px 8px; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tfoot td { font-weight: 600; }
.id { color: #666666; font-size: 0.8em; font-weight: normal; }
.none, .empty { color: #777777; }
.state { padding: 1px 6px; border-radius: 3px; color: #ffffff; }
.state.ok { background: #2e7d32; }
.state.warning { background: #b26a00; }
.state.at_risk { background: #d55e00; }
.state.exceeded { background: #b00020; }
.incomplete { color: #b00020; font-size: 12px; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
section.tenant { border-top: 2px solid #e0e0e0; margin-top: 24px; }
svg { display: block; max-width: 100%; height: auto; font-size: 12px; }
svg text { fill: #333333; }
svg .tick { font-size: 11px; fill: #555555; }
svg .axis-title { font-size: 12px; }
svg .note { font-size: 11px; }
svg line.grid { stroke: #e6e6e6; }
svg line.axis { stroke: #888888; }
details { margin: 6px 0 0; }
@media print { details { display: none; } }
</style>
";

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::budget::{BudgetPeriod, Thresholds};
    use ledger::enforcement::BudgetState;
    use ledger::money::Money;
    use ledger::tenant::TenantState;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, d).unwrap()
    }

    fn eur() -> Currency {
        Currency::parse("c", "EUR").unwrap()
    }

    fn cost(tenant: &str, d: NaiveDate, meter: &str, amount: &str) -> DailyCost {
        DailyCost {
            tenant: TenantId::parse(tenant).unwrap(),
            day: d,
            meter: meter.into(),
            quantity: dec("1"),
            unit: "core_seconds".into(),
            amount: dec(amount),
            currency: eur(),
            priced_quantity: dec("1"),
            price_unit: "core_hour".into(),
        }
    }

    fn status(tenant: &str, spent: &str, forecast: &str) -> BudgetStatus {
        BudgetStatus {
            tenant: TenantId::parse(tenant).unwrap(),
            tenant_state: TenantState::Active,
            period: BudgetPeriod::Monthly,
            period_start: day(1),
            period_end: NaiveDate::from_ymd_opt(2026, 4, 1).unwrap(),
            budget: Money {
                amount: dec("10"),
                currency: eur(),
            },
            thresholds: Thresholds::parse(vec![50, 80, 100]).unwrap(),
            spent: dec(spent),
            trailing: dec("0"),
            trailing_start: midnight(day(1)),
            data_until: Some(midnight(day(10))),
            forecast: dec(forecast),
            complete: true,
            state: BudgetState::Warning,
        }
    }

    fn report(costs: &[DailyCost], statuses: Vec<BudgetStatus>, names: &[(&str, &str)]) -> String {
        let names = names
            .iter()
            .map(|(id, name)| (TenantId::parse(id).unwrap(), (*name).to_owned()))
            .collect();
        HtmlReport::new(
            day(1),
            day(31),
            midnight(day(31)),
            midnight(day(31)),
            costs,
            statuses,
            &names,
        )
        .render()
    }

    #[test]
    fn escape_covers_element_and_attribute_text() {
        assert_eq!(
            escape(r#"<b onclick='x'>"A & B"</b>"#),
            "&lt;b onclick=&#39;x&#39;&gt;&quot;A &amp; B&quot;&lt;/b&gt;"
        );
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn hostile_names_are_escaped_everywhere() {
        let html = report(
            &[cost("acme", day(2), "<img src=x onerror=alert(1)>", "1.00")],
            vec![],
            &[("acme", "<script>alert(\"x\")</script> & Co")],
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co"));
        assert!(html.contains("data-meter=\"&lt;img src=x onerror=alert(1)&gt;\""));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn a_day_sums_its_rows_exactly_and_rounds_once() {
        // Two price units of one meter on one day: 0.004 + 0.004 = 0.008, shown as 0.01 (not
        // 0.00 + 0.00).
        let html = report(
            &[
                cost("acme", day(2), "cpu", "0.004"),
                cost("acme", day(2), "cpu", "0.004"),
                cost("acme", day(3), "cpu", "0.125"),
            ],
            vec![],
            &[],
        );
        assert!(html.contains("data-day=\"2026-03-02\" data-meter=\"cpu\" data-currency=\"EUR\" data-amount=\"0.01\""), "{html}");
        assert!(html.contains("data-day=\"2026-03-03\" data-meter=\"cpu\" data-currency=\"EUR\" data-amount=\"0.12\""), "{html}");
        // The period total: 0.133 rounded once.
        assert!(
            html.contains("data-tenant=\"acme\" data-currency=\"EUR\" data-cost=\"0.13\""),
            "{html}"
        );
        assert!(html.contains("no budget in force"));
    }

    #[test]
    fn days_outside_the_period_only_feed_the_burn_down() {
        let html = HtmlReport::new(
            day(10),
            day(12),
            midnight(day(13)),
            midnight(day(13)),
            &[
                cost("acme", day(2), "cpu", "3"),
                cost("acme", day(11), "cpu", "2"),
            ],
            vec![status("acme", "5", "12")],
            &BTreeMap::new(),
        )
        .render();
        assert!(html.contains("data-cost=\"2.00\""), "{html}");
        assert!(!html.contains("data-day=\"2026-03-02\""), "{html}");
        assert!(
            html.contains("data-spent=\"5.00\" data-forecast=\"12.00\""),
            "{html}"
        );
        assert!(html.contains("data-cumulative=\"3.00\""), "{html}");
        assert!(html.contains("data-cumulative=\"5.00\""), "{html}");
        assert!(html.contains("class=\"forecast\""), "{html}");
    }

    #[test]
    fn the_summary_shows_budget_percent_state_and_forecast() {
        let html = report(
            &[cost("acme", day(2), "cpu", "6.5")],
            vec![status("acme", "6.5", "20.25")],
            &[("acme", "Acme Corp")],
        );
        assert!(
            html.contains(
                "data-spent=\"6.50\" data-budget=\"10.00\" data-percent=\"65\" \
                 data-forecast=\"20.25\" data-state=\"warning\""
            ),
            "{html}"
        );
        assert!(html.contains("Acme Corp <span class=\"id\">acme</span>"));
        assert!(html.contains("<span class=\"state warning\">warning</span>"));
    }

    #[test]
    fn an_empty_report_says_so() {
        let html = report(&[], vec![], &[]);
        assert!(html.contains("No costs and no budgets"), "{html}");
        assert!(!html.contains("<svg"));
    }

    #[test]
    fn scales_are_nice_and_cover_the_range() {
        assert_eq!(
            Scale::nice(dec("0"), dec("0.403")),
            Scale {
                lo: dec("0"),
                hi: dec("0.5"),
                step: dec("0.1")
            }
        );
        assert_eq!(
            Scale::nice(dec("0"), dec("1234")),
            Scale {
                lo: dec("0"),
                hi: dec("1500"),
                step: dec("500")
            }
        );
        let s = Scale::nice(dec("-3"), dec("7"));
        assert_eq!(
            s,
            Scale {
                lo: dec("-4"),
                hi: dec("8"),
                step: dec("2")
            }
        );
        assert!(s.ticks().any(|t| t.is_zero()));
        assert_eq!(Scale::nice(dec("0"), dec("0")).hi, dec("1"));
        let tiny = Scale::nice(dec("0"), dec("0.0000003"));
        assert!(tiny.hi >= dec("0.0000003") && tiny.step > Decimal::ZERO);
    }

    #[test]
    fn status_is_taken_at_the_end_of_the_last_day_or_now() {
        let now = midnight(day(15)) + chrono::Duration::hours(5);
        assert_eq!(status_instant(day(31), now), now);
        let end = status_instant(day(10), now);
        assert_eq!(end.date_naive(), day(10));
        assert_eq!(end + chrono::Duration::microseconds(1), midnight(day(11)));
    }

    #[test]
    fn each_meter_keeps_its_colour_across_tenants() {
        let html = report(
            &[
                cost("acme", day(2), "memory", "1"),
                cost("globex", day(2), "cpu", "1"),
                cost("globex", day(2), "memory", "1"),
            ],
            vec![],
            &[],
        );
        let memory = format!("fill=\"{}\" data-tenant=", METER_COLOURS[1]);
        assert_eq!(html.matches(&memory).count(), 2, "{html}");
    }
}
