//! Phase 4: end-to-end latency (API response → the event's row in DB2's `processed_events`) at
//! two open-loop write rates, and its plot.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use e2e::Stack;
use serde_json::json;

use crate::{Results, Sizes};

/// Each rate's label and sorted latencies, for the plot.
pub(crate) type Series = Vec<(String, Vec<f64>)>;

/// The pipeline's processes, by name, whose CPU the latency phase counts.
pub(crate) type Parts = Vec<(&'static str, Option<u32>)>;

pub(crate) async fn run(stack: &Stack, sizes: &Sizes, parts: &Parts, results: &mut Results) -> anyhow::Result<Series> {
    let mut series = Vec::new();
    let mut latency_rows = Vec::new();
    let relay = e2e::ApiClient::new(&stack.url(e2e::stack::Service::Relay));
    if !sizes.warmup.is_zero() {
        let rate = sizes.rates[0];
        let (_, Written { sent, refused, .. }) = open_loop_creates(stack, rate, sizes.warmup, &[]).await?;
        println!(
            "warm-up, not measured: {sent} writes at {rate}/s over {} s ({refused} refused by the API)",
            sizes.warmup.as_secs()
        );
        results.insert(
            "end_to_end_warmup".into(),
            json!({"rate": rate, "secs": sizes.warmup.as_secs(), "sent": sent, "refused": refused}),
        );
    }
    for rate in sizes.rates {
        let metrics_before = relay.text("/metrics").await?;
        let (traced, Written { sent, refused, cpu }) = end_to_end_traced(stack, rate, sizes.phase, parts).await?;
        let (phases, phase_figures) = crate::measure::round_phases(&metrics_before, &relay.text("/metrics").await?);
        let latencies = traced.totals();
        let (p50, p95, p99, max) = (
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.95),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
        );
        let stages = traced.stages();
        println!(
            "end-to-end at {rate:>4} writes/s: p50 {p50:>7.1} ms  p95 {p95:>7.1} ms  p99 {p99:>7.1} ms  max {max:>7.1} ms  ({} of {sent} seen, {refused} refused by the API)",
            latencies.len()
        );
        println!("    {}", stages.line);
        println!("    while writing, {}", cpu.0);
        println!("    relay round phases, mean per round: {phases}");
        latency_rows.push(json!({"rate": rate, "sent": sent, "seen": latencies.len(), "refused": refused, "p50_ms": p50, "p95_ms": p95,
            "p99_ms": p99, "max_ms": max, "round_phases": phase_figures, "stages": stages.figures, "cpu": cpu.1}));
        series.push((format!("{rate} writes/s (n={})", latencies.len()), latencies));
    }
    results.insert("end_to_end".into(), json!(latency_rows));
    Ok(series)
}

/// One write's way through the pipeline, in ms from the API's response: how long the API took
/// to answer, when the relay handed its record to the producer (the record's `CreateTime`,
/// librdkafka's clock at the enqueue, the same machine's wall clock; ms precision, and it can come
/// before the response reaches the client), and when the sink applied it (DB2's `processed_at`).
#[derive(Debug, Clone, Copy)]
struct Write {
    api: f64,
    enqueued: f64,
    applied: f64,
}

/// The writes of one rate, traced.
pub(crate) struct Traced(Vec<Write>);

/// What [`Traced::stages`] found: a line for the table and its figures.
pub(crate) struct Stages {
    line: String,
    figures: serde_json::Value,
}

impl Traced {
    /// Sorted end-to-end latencies.
    fn totals(&self) -> Vec<f64> {
        let mut totals: Vec<f64> = self.0.iter().map(|write| write.applied.max(0.0)).collect();
        totals.sort_by(f64::total_cmp);
        totals
    }

    /// Where the time went: each stage's p50 and p99, and the mean of each stage over the
    /// slowest 1 % of writes (percentiles of stages do not add up; the slowest writes' stages do).
    fn stages(&self) -> Stages {
        let p50_p99 = |stage: fn(&Write) -> f64| {
            let mut values: Vec<f64> = self.0.iter().map(stage).collect();
            values.sort_by(f64::total_cmp);
            (percentile(&values, 0.5), percentile(&values, 0.99))
        };
        let (api, to_relay, to_sink) =
            (p50_p99(|w| w.api), p50_p99(|w| w.enqueued), p50_p99(|w| w.applied - w.enqueued));
        let mut slowest = self.0.clone();
        slowest.sort_by(|a, b| b.applied.total_cmp(&a.applied));
        slowest.truncate((self.0.len() / 100).max(1));
        let mean = |stage: fn(&Write) -> f64| slowest.iter().map(stage).sum::<f64>() / slowest.len() as f64;
        let (slow_to_relay, slow_to_sink) = (mean(|w| w.enqueued), mean(|w| w.applied - w.enqueued));
        Stages {
            line: format!(
                "API's answer p50 {:.1} / p99 {:.1} ms (not in the end-to-end figure); response → relay's enqueue p50 {:.1} / p99 {:.1} ms; \
                 enqueue → applied in DB2 p50 {:.1} / p99 {:.1} ms; slowest 1 % ({} writes), mean: {slow_to_relay:.1} + {slow_to_sink:.1} ms",
                api.0,
                api.1,
                to_relay.0,
                to_relay.1,
                to_sink.0,
                to_sink.1,
                slowest.len()
            ),
            figures: json!({"api_answer_ms": {"p50": api.0, "p99": api.1},
                "response_to_enqueue_ms": {"p50": to_relay.0, "p99": to_relay.1},
                "enqueue_to_applied_ms": {"p50": to_sink.0, "p99": to_sink.1},
                "slowest_1pct_mean_ms": {"response_to_enqueue": slow_to_relay, "enqueue_to_applied": slow_to_sink}}),
        }
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Open-loop creates at `rate`/s for `duration`; returns each latency in ms from the API's
/// response to the event's row in DB2's `processed_events`, sorted.
pub(crate) async fn end_to_end(stack: &Stack, rate: u64, duration: Duration) -> anyhow::Result<(Vec<f64>, Written)> {
    let (responses, written) = open_loop_creates(stack, rate, duration, &[]).await?;
    let applied = applied_at(stack, &responses).await?;
    let mut latencies: Vec<f64> = responses
        .iter()
        .filter_map(|response| Some(ms(response.responded, *applied.get(&response.id)?)?.max(0.0)))
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, written))
}

/// A create the API answered: the article's id, when the request was sent and when its answer came.
struct Response {
    id: i64,
    sent: DateTime<Utc>,
    responded: DateTime<Utc>,
}

/// Open-loop creates at `rate`/s for `duration`, then waits until DB2 has caught up; returns
/// the creates the API answered, and the CPU `parts` used while the writes went on.
async fn open_loop_creates(
    stack: &Stack,
    rate: u64,
    duration: Duration,
    parts: &[(&'static str, Option<u32>)],
) -> anyhow::Result<(Vec<Response>, Written)> {
    let api = stack.api();
    let cpu = crate::measure::CpuUse::start(parts.iter().copied());
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        ticker.tick().await;
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Utc::now();
            let article =
                api.create(&json!({"title": format!("e2e {i}"), "content": "latency", "author": "e2e"})).await?;
            anyhow::Ok(Response { id: article.id, sent, responded: Utc::now() })
        }));
    }
    // A write the API refuses (503 when DB1's pool is exhausted at a rate near its ceiling) is
    // counted, not fatal: the others are still measured.
    let mut responses = Vec::with_capacity(total);
    let mut refused = 0;
    for task in tasks {
        match task.await? {
            Ok(response) => responses.push(response),
            Err(error) => {
                if refused == 0 {
                    eprintln!("a write at {rate}/s was refused: {error:#}");
                }
                refused += 1;
            }
        }
    }
    let cpu = cpu.finish(total);
    stack.wait_for_replica(Duration::from_secs(300)).await?;
    Ok((responses, Written { sent: total, refused, cpu }))
}

/// [`end_to_end`] with each write's stages ([`Traced`]); writes not seen in DB2 or on the topic
/// are left out.
pub(crate) async fn end_to_end_traced(
    stack: &Stack,
    rate: u64,
    duration: Duration,
    parts: &[(&'static str, Option<u32>)],
) -> anyhow::Result<(Traced, Written)> {
    let (responses, written) = open_loop_creates(stack, rate, duration, parts).await?;
    let applied = applied_at(stack, &responses).await?;
    let enqueued: HashMap<i64, i64> = stack
        .topic_records()
        .await?
        .iter()
        .filter(|record| record.header(kafka_kit::EVENT_TYPE_HEADER) == Some("article.created"))
        .filter_map(|record| Some((record.key.as_deref()?.parse().ok()?, record.timestamp_ms?)))
        .collect();
    let traced = responses
        .iter()
        .filter_map(|response| {
            let enqueued = DateTime::<Utc>::from_timestamp_millis(*enqueued.get(&response.id)?)?;
            Some(Write {
                api: ms(response.sent, response.responded)?,
                enqueued: ms(response.responded, enqueued)?,
                applied: ms(response.responded, *applied.get(&response.id)?)?,
            })
        })
        .collect();
    Ok((Traced(traced), written))
}

/// When the sink applied each of `responses`' created events (DB2's `processed_at`).
async fn applied_at(stack: &Stack, responses: &[Response]) -> anyhow::Result<HashMap<i64, DateTime<Utc>>> {
    let db2 = stack.db2_client().await?;
    let ids: Vec<i64> = responses.iter().map(|response| response.id).collect();
    let rows = db2
        .query(
            "SELECT article_id, processed_at AT TIME ZONE current_setting('TimeZone') FROM processed_events \
             WHERE event_type = 'article.created' AND article_id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Milliseconds from `from` to `to`.
fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> Option<f64> {
    (to - from).num_microseconds().map(|micros| micros as f64 / 1000.0)
}

/// What the open-loop writer sent, how many of those writes the API refused, and the CPU the
/// pipeline's parts used meanwhile (a line and its figures, per 1,000 writes).
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub(crate) sent: usize,
    pub(crate) refused: usize,
    pub(crate) cpu: (String, serde_json::Value),
}

/// A labelled line: (x, y) points.
pub(crate) type Curve = (String, Vec<(f64, f64)>);

const CHART_WIDTH: f64 = 720.0;
const CHART_HEIGHT: f64 = 420.0;

/// Two charts, one above the other: the end-to-end latency distributions, and the sink's drain
/// curves (events applied over time, per sink count).
pub(crate) fn svg_plot(latencies: &Series, drains: &[Curve]) -> String {
    let distributions: Vec<Curve> = latencies
        .iter()
        .map(|(label, values)| {
            let points = values.iter().enumerate().map(|(i, ms)| (*ms, (i + 1) as f64 / values.len() as f64)).collect();
            (label.clone(), points)
        })
        .collect();
    let height = if drains.is_empty() { CHART_HEIGHT } else { 2.0 * CHART_HEIGHT };
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{CHART_WIDTH}' height='{height}' font-family='sans-serif' font-size='12'>\
         <rect width='100%' height='100%' fill='white'/>"
    );
    svg.push_str(&chart(
        "End-to-end latency (API response → applied in DB2): cumulative distribution",
        "latency (ms)",
        "fraction of events",
        &distributions,
        0.0,
    ));
    if !drains.is_empty() {
        svg.push_str(&chart(
            "Sink drain of the topic's backlog (default settings)",
            "seconds",
            "events applied",
            drains,
            CHART_HEIGHT,
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// One line chart of `curves`, its top at `top`, each axis from 0 to its largest value.
fn chart(title: &str, x_label: &str, y_label: &str, curves: &[Curve], top: f64) -> String {
    let (width, height, margin) = (CHART_WIDTH, CHART_HEIGHT, 60.0);
    let points = || curves.iter().flat_map(|(_, points)| points.iter().copied());
    let max_x = points().map(|(x, _)| x).fold(f64::MIN_POSITIVE, f64::max);
    let max_y = points().map(|(_, y)| y).fold(f64::MIN_POSITIVE, f64::max);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let (plot_width, plot_height) = (width - margin - 20.0, height - 2.0 * margin);
    let mut svg = format!(
        "<g transform='translate(0 {top})'>\
         <text x='{}' y='20' text-anchor='middle' font-size='14'>{title}</text>\
         <line x1='{margin}' y1='{}' x2='{}' y2='{}' stroke='black'/><line x1='{margin}' y1='{margin}' x2='{margin}' y2='{}' stroke='black'/>\
         <text x='{}' y='{}' text-anchor='middle'>{x_label}, max {max_x:.1}</text><text x='15' y='{}' transform='rotate(-90 15 {})' text-anchor='middle'>{y_label}</text>",
        width / 2.0,
        height - margin,
        width - 20.0,
        height - margin,
        height - margin,
        width / 2.0,
        height - 15.0,
        height / 2.0,
        height / 2.0
    );
    for tick in 0..=4 {
        let fraction = f64::from(tick) / 4.0;
        let y = height - margin - fraction * plot_height;
        let x = margin + fraction * plot_width;
        svg.push_str(&format!(
            "<text x='{}' y='{}' text-anchor='end'>{}</text><text x='{x}' y='{}' text-anchor='middle'>{}</text>",
            margin - 5.0,
            y + 4.0,
            tick_label(fraction * max_y),
            height - margin + 15.0,
            tick_label(fraction * max_x)
        ));
    }
    for (index, (label, curve)) in curves.iter().enumerate() {
        let color = colors[index % colors.len()];
        let line: Vec<String> = curve
            .iter()
            .map(|(x, y)| {
                format!("{:.1},{:.1}", margin + x / max_x * plot_width, height - margin - y / max_y * plot_height)
            })
            .collect();
        svg.push_str(&format!("<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>", line.join(" ")));
        svg.push_str(&format!(
            "<text x='{}' y='{}' fill='{color}'>{label}</text>",
            width - 240.0,
            height - margin - 40.0 - 18.0 * index as f64
        ));
    }
    svg.push_str("</g>");
    svg
}

/// `0.25`, `12`, `4000`: short enough for an axis.
fn tick_label(value: f64) -> String {
    if value < 10.0 { format!("{value:.2}") } else { format!("{value:.0}") }
}
