//! The `sink_consumer_lag` gauge: per assigned partition, how far the sink is behind the log.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer as _;

use crate::group::SinkConsumer;
use tokio_util::sync::CancellationToken;

use crate::metrics::SinkMetrics;

/// How often the lag gauge is refreshed.
const LAG_REFRESH: Duration = Duration::from_secs(5);

/// Refreshes `sink_consumer_lag` until `shutdown`: per assigned partition, the high watermark
/// minus the consumer's position.
pub(crate) async fn report_lag(consumer: Arc<SinkConsumer>, metrics: SinkMetrics, shutdown: CancellationToken) {
    while service_kit::shutdown::sleep_unless_cancelled(&shutdown, LAG_REFRESH).await {
        let (consumer, metrics) = (consumer.clone(), metrics.clone());
        let measured = tokio::task::spawn_blocking(move || -> Result<(), rdkafka::error::KafkaError> {
            let positions = consumer.position()?;
            metrics.lag.reset();
            for element in positions.elements() {
                let (_, high) =
                    consumer.fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(2))?;
                let position = match element.offset() {
                    rdkafka::Offset::Offset(offset) => offset,
                    _ => continue,
                };
                metrics.lag.with_label_values(&[&element.partition().to_string()]).set((high - position).max(0));
            }
            Ok(())
        })
        .await;
        if let Ok(Err(error)) = measured {
            tracing::debug!(%error, "cannot measure the consumer lag");
        }
    }
}
