//! Phase 4: end-to-end latency (API response → the event's row in DB2's `processed_events`) at
//! two open-loop write rates, and its plot.

use std::time::Duration;

use chrono::{DateTime, Utc};
use e2e::Stack;
use serde_json::json;

use crate::{Results, Sizes};

/// Each rate's label and sorted latencies, for the plot.
pub(crate) type Series = Vec<(String, Vec<f64>)>;

pub(crate) async fn run(stack: &Stack, sizes: &Sizes, results: &mut Results) -> anyhow::Result<Series> {
    let mut series = Vec::new();
    let mut latency_rows = Vec::new();
    let relay = e2e::ApiClient::new(&stack.url(e2e::stack::Service::Relay));
    for rate in sizes.rates {
        let metrics_before = relay.text("/metrics").await?;
        let (latencies, Written { sent, refused }) = end_to_end(stack, rate, sizes.phase).await?;
        let (phases, phase_figures) = crate::measure::round_phases(&metrics_before, &relay.text("/metrics").await?);
        let (p50, p95, p99, max) = (
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.95),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
        );
        println!(
            "end-to-end at {rate:>4} writes/s: p50 {p50:>7.1} ms  p95 {p95:>7.1} ms  p99 {p99:>7.1} ms  max {max:>7.1} ms  ({} of {sent} seen, {refused} refused by the API)",
            latencies.len()
        );
        println!("    relay round phases, mean per round: {phases}");
        latency_rows.push(json!({"rate": rate, "sent": sent, "seen": latencies.len(), "refused": refused, "p50_ms": p50, "p95_ms": p95,
            "p99_ms": p99, "max_ms": max, "round_phases": phase_figures}));
        series.push((format!("{rate} writes/s (n={})", latencies.len()), latencies));
    }
    results.insert("end_to_end".into(), json!(latency_rows));
    Ok(series)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Open-loop creates at `rate`/s for `duration`; returns each latency in ms from the API's
/// response to the event's row in DB2's `processed_events`.
pub(crate) async fn end_to_end(stack: &Stack, rate: u64, duration: Duration) -> anyhow::Result<(Vec<f64>, Written)> {
    let api = stack.api();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        ticker.tick().await;
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let article =
                api.create(&json!({"title": format!("e2e {i}"), "content": "latency", "author": "e2e"})).await?;
            anyhow::Ok((article.id, Utc::now()))
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
    stack.wait_for_replica(Duration::from_secs(300)).await?;
    let db2 = stack.db2_client().await?;
    let ids: Vec<i64> = responses.iter().map(|(id, _)| *id).collect();
    let rows = db2
        .query(
            "SELECT article_id, processed_at AT TIME ZONE current_setting('TimeZone') FROM processed_events \
             WHERE event_type = 'article.created' AND article_id = ANY($1)",
            &[&ids],
        )
        .await?;
    let applied: std::collections::HashMap<i64, DateTime<Utc>> =
        rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let mut latencies: Vec<f64> = responses
        .iter()
        .filter_map(|(id, responded)| {
            let micros = (*applied.get(id)? - *responded).num_microseconds()?;
            Some((micros as f64 / 1000.0).max(0.0))
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, Written { sent: total, refused }))
}

/// What the open-loop writer sent, and how many of those writes the API refused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Written {
    pub(crate) sent: usize,
    pub(crate) refused: usize,
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
