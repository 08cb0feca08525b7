//! Figures for Prometheus: `GET /metrics` on the admin listener, in the
//! text exposition format (version 0.0.4).
//!
//! Counters live in this process (requests per listener, route and status,
//! with their durations; log entries this process appended, by kind;
//! providers' answers it refused, by reason); the
//! gauges are read when scraped (the database and broker, the committed
//! log, the latest checkpoint), but for the outbox and inbox backlogs,
//! which are the hub's last count of them (`crate::backlog`, taken about
//! once a second for the inbox cap). Several hubs
//! each report their own counters and the same shared gauges. Hand-written
//! rather than a metrics crate: a handful of series, and the format is
//! plain text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// The upper bounds, in seconds, of the request duration histogram.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One series of requests: how many, how long in all, and how many fell
/// at or under each bucket's bound.
#[derive(Debug, Clone, Default)]
struct Requests {
    count: u64,
    micros: u64,
    buckets: [u64; BUCKETS.len()],
}

/// Listener, then route, then status: nested so that counting a request
/// allocates nothing once its series exists.
type ByListener = BTreeMap<&'static str, BTreeMap<String, BTreeMap<u16, Requests>>>;

/// Why the hub did not take an answer from the broker (it was
/// dead-lettered, with these words and more in `x-refused-because`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AnswerRefusal {
    /// Not an answer, nor a JSON array of answers.
    Unreadable,
    /// Published by another broker user than the one its provider answers as.
    WrongBrokerUser,
    /// An answer that can never be logged: no request is logged under its
    /// exchange id, or it names another provider than the request's.
    NotLoggable,
}

impl AnswerRefusal {
    fn label(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::WrongBrokerUser => "wrong_broker_user",
            Self::NotLoggable => "not_loggable",
        }
    }
}

/// This process's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<ByListener>,
    answers_refused: Mutex<BTreeMap<AnswerRefusal, u64>>,
}

impl Metrics {
    /// Count `n` answers refused for `why`.
    pub fn refused_answers(&self, why: AnswerRefusal, n: u64) {
        if n > 0 {
            *self
                .answers_refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(why)
                .or_default() += n;
        }
    }

    /// Count one request answered with `status` after `elapsed`.
    pub fn observe(&self, listener: &'static str, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut requests = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let routes = requests.entry(listener).or_default();
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), BTreeMap::new());
        }
        let Some(statuses) = routes.get_mut(route) else {
            return;
        };
        let r = statuses.entry(status).or_default();
        r.count += 1;
        r.micros += u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        for (n, bound) in r.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *n += 1;
            }
        }
    }

    /// The exposition of the counters and of `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let requests: Vec<(&str, String, u16, Requests)> = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .flat_map(|(listener, routes)| {
                routes.iter().flat_map(move |(route, statuses)| {
                    statuses
                        .iter()
                        .map(move |(status, r)| (*listener, route.clone(), *status, r.clone()))
                })
            })
            .collect();
        help(
            &mut out,
            "hub_http_requests_total",
            "counter",
            "Requests answered by this process, by listener, route and status.",
        );
        for (listener, route, status, r) in &requests {
            let _ = writeln!(
                out,
                "hub_http_requests_total{{listener=\"{listener}\",route=\"{}\",status=\"{status}\"}} {}",
                escape(route),
                r.count
            );
        }
        help(
            &mut out,
            "hub_http_request_duration_seconds",
            "histogram",
            "How long requests took to answer, by listener and route.",
        );
        let mut by_route: BTreeMap<(&str, &str), Requests> = BTreeMap::new();
        for (listener, route, _, r) in &requests {
            let sum = by_route.entry((listener, route.as_str())).or_default();
            sum.count += r.count;
            sum.micros += r.micros;
            for (s, n) in sum.buckets.iter_mut().zip(r.buckets) {
                *s += n;
            }
        }
        for ((listener, route), r) in &by_route {
            let labels = format!("listener=\"{listener}\",route=\"{}\"", escape(route));
            for (bound, n) in BUCKETS.iter().zip(r.buckets) {
                let _ = writeln!(
                    out,
                    "hub_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "hub_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                r.count
            );
            let sum = r.micros as f64 / 1e6;
            let _ = writeln!(
                out,
                "hub_http_request_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "hub_http_request_duration_seconds_count{{{labels}}} {}",
                r.count
            );
        }
        let refused = self
            .answers_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if !refused.is_empty() {
            help(
                &mut out,
                "hub_answers_refused_total",
                "counter",
                "Providers' answers this process refused and dead-lettered, by reason.",
            );
            for (why, n) in refused {
                let _ = writeln!(
                    out,
                    "hub_answers_refused_total{{reason=\"{}\"}} {n}",
                    why.label()
                );
            }
        }
        gauges.render(&mut out);
        out
    }
}

/// What a scrape reads from the hub and its store.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub database_up: bool,
    /// `None` without a broker (embedded queue).
    pub broker_up: Option<bool>,
    /// Entries in the committed log, as this process last saw it.
    pub log_size: u64,
    /// Log entries this process appended since it started, by kind.
    pub appended: Vec<(&'static str, u64)>,
    /// `None` before the first checkpoint or when the database is down.
    pub checkpoint_size: Option<u64>,
    /// Unpublished outbox rows by hub instance, at the last count; `None`
    /// when the database is down or the last count failed.
    pub outbox: Option<Vec<(String, u64)>>,
    /// Messages waiting in each recipient's inbox, at the last count; `None`
    /// when the database is down or the last count failed.
    pub inboxes: Option<Vec<(String, u64)>>,
    /// Pending withdrawals by recipient, at the last count; as `inboxes`.
    pub withdrawals: Option<Vec<(String, u64)>>,
}

impl Gauges {
    fn render(&self, out: &mut String) {
        help(
            out,
            "hub_database_up",
            "gauge",
            "Whether the database answered this scrape.",
        );
        let _ = writeln!(out, "hub_database_up {}", u8::from(self.database_up));
        if let Some(up) = self.broker_up {
            help(
                out,
                "hub_broker_up",
                "gauge",
                "Whether the connection to the broker is up.",
            );
            let _ = writeln!(out, "hub_broker_up {}", u8::from(up));
        }
        help(
            out,
            "hub_log_size",
            "gauge",
            "Entries in the committed log, as this process last saw it.",
        );
        let _ = writeln!(out, "hub_log_size {}", self.log_size);
        help(
            out,
            "hub_log_entries_appended_total",
            "counter",
            "Log entries this process appended, by kind.",
        );
        for (kind, n) in &self.appended {
            let _ = writeln!(out, "hub_log_entries_appended_total{{kind=\"{kind}\"}} {n}");
        }
        if let Some(size) = self.checkpoint_size {
            help(
                out,
                "hub_checkpoint_size",
                "gauge",
                "The size of the latest signed checkpoint.",
            );
            let _ = writeln!(out, "hub_checkpoint_size {size}");
        }
        if let Some(outbox) = &self.outbox {
            labelled_gauge(
                out,
                ("hub_outbox_unsent", "instance"),
                "Outbox rows the broker has not confirmed yet, by hub instance.",
                outbox,
            );
        }
        if let Some(inboxes) = &self.inboxes {
            labelled_gauge(
                out,
                ("hub_inbox_messages", "recipient"),
                "Messages waiting in a recipient's inbox (leased or not).",
                inboxes,
            );
        }
        if let Some(withdrawals) = &self.withdrawals {
            labelled_gauge(
                out,
                ("hub_inbox_withdrawals_pending", "recipient"),
                "Withdrawals of events from a recipient's inbox not yet worked off; until they are, it hands out nothing.",
                withdrawals,
            );
        }
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// A gauge with one line per `(label value, count)` row.
fn labelled_gauge<'a>(
    out: &mut String,
    (name, label): (&str, &str),
    text: &str,
    rows: impl IntoIterator<Item = &'a (String, u64)>,
) {
    help(out, name, "gauge", text);
    for (value, n) in rows {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape(value));
    }
}

/// A label value as the format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The middleware that counts every request of one listener. The route is
/// the matched pattern (`/v1/exchanges/{id}`), never the path itself, so
/// that the series stay few.
pub async fn count_requests(
    State((metrics, listener)): State<(std::sync::Arc<Metrics>, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    // A matched path is an `Arc<str>`: cloning it allocates nothing.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(
        listener,
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_fall_into_their_buckets_and_sum_by_route() {
        let m = Metrics::default();
        m.observe("api", "/v1/exchanges", 200, Duration::from_millis(3));
        m.observe("api", "/v1/exchanges", 200, Duration::from_millis(30));
        m.observe("api", "/v1/exchanges", 422, Duration::from_secs(20));
        let text = m.render(&Gauges::default());
        let value = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .to_owned()
        };
        let labels = r#"listener="api",route="/v1/exchanges""#;
        assert_eq!(
            value(&format!(
                "hub_http_requests_total{{{labels},status=\"200\"}}"
            )),
            "2"
        );
        assert_eq!(
            value(&format!(
                "hub_http_requests_total{{{labels},status=\"422\"}}"
            )),
            "1"
        );
        let bucket = |le: &str| {
            value(&format!(
                "hub_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.0025"), "0");
        assert_eq!(bucket("0.005"), "1");
        assert_eq!(bucket("0.05"), "2");
        assert_eq!(bucket("10"), "2");
        assert_eq!(bucket("+Inf"), "3");
        assert_eq!(
            value(&format!(
                "hub_http_request_duration_seconds_count{{{labels}}}"
            )),
            "3"
        );
        assert_eq!(
            value(&format!(
                "hub_http_request_duration_seconds_sum{{{labels}}}"
            )),
            "20.033"
        );
    }

    #[test]
    fn refused_answers_add_up_by_reason_and_are_left_out_until_there_is_one() {
        let m = Metrics::default();
        assert!(
            !m.render(&Gauges::default())
                .contains("hub_answers_refused_total")
        );
        m.refused_answers(AnswerRefusal::WrongBrokerUser, 2);
        m.refused_answers(AnswerRefusal::NotLoggable, 0);
        m.refused_answers(AnswerRefusal::WrongBrokerUser, 1);
        m.refused_answers(AnswerRefusal::Unreadable, 1);
        let text = m.render(&Gauges::default());
        assert!(
            text.contains(concat!(
                "# TYPE hub_answers_refused_total counter\n",
                "hub_answers_refused_total{reason=\"unreadable\"} 1\n",
                "hub_answers_refused_total{reason=\"wrong_broker_user\"} 3\n"
            )),
            "{text}"
        );
        assert!(!text.contains("not_loggable"), "{text}");
    }

    #[test]
    fn gauges_absent_are_left_out_and_label_values_are_escaped() {
        let text = Metrics::default().render(&Gauges {
            database_up: false,
            inboxes: Some(vec![("a\"b\\c".into(), 4)]),
            withdrawals: Some(vec![("x/y".into(), 1)]),
            ..Gauges::default()
        });
        assert!(text.contains("hub_database_up 0\n"), "{text}");
        assert!(!text.contains("hub_broker_up"), "{text}");
        assert!(!text.contains("hub_checkpoint_size"), "{text}");
        assert!(!text.contains("hub_outbox_unsent"), "{text}");
        assert!(
            text.contains(r#"hub_inbox_messages{recipient="a\"b\\c"} 4"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hub_inbox_withdrawals_pending{recipient="x/y"} 1"#),
            "{text}"
        );
    }
}
