//! The end-to-end harness: real PostgreSQL clusters, a real broker (Apache Kafka, or nisshi with
//! `BROKER=nisshi`), Jaeger and the real service binaries, each on its own free port under its own
//! directory, so tests run in parallel and leave nothing behind. The same code starts the local
//! stack (`stack` binary) with the seed's names and ports.

pub mod api_client;
pub mod broker;
pub mod certs;
pub mod cli;
pub mod component;
pub mod jaeger;
pub mod postgres;
pub mod process;
pub mod replica;
pub mod stack;
pub mod topics;
pub mod verify;
pub mod wait;
pub mod workload;

pub use api_client::ApiClient;
pub use stack::{Ports, Stack, StackOptions};

/// The sum of every sample of metric `name` (all its label sets) in Prometheus text; 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Prometheus text a service on 127.0.0.1 serves at `/metrics` on `port`.
pub async fn metrics_at(port: u16) -> anyhow::Result<String> {
    ApiClient::new(&format!("http://127.0.0.1:{port}")).text("/metrics").await
}

/// Lowest port [`free_port`] hands out.
const LOWEST_TEST_PORT: u16 = 10_000;

/// A TCP port on 127.0.0.1 that is free now, below the kernel's ephemeral range, and not handed
/// out before by this process nor held by another live test process (see [`claim_port`]).
///
/// Below the ephemeral range because that range also supplies the local ports of outgoing
/// connections, which tests open all the time: a port the OS picked for `bind(0)` and released
/// could be taken by a client connection before the service bound it, or while a killed service
/// was down before its restart on the same port.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let ceiling = ephemeral_range_start().unwrap_or(32_768);
    if ceiling <= LOWEST_TEST_PORT + 1_000 {
        return os_assigned_port();
    }
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = fastrand::u16(LOWEST_TEST_PORT..ceiling);
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && claim_port(port) {
            handed_out.insert(port);
            return port;
        }
    }
}

/// Claims `port` for this process across the test processes running side by side (nextest runs
/// each test in a process of its own): a port free when one test checked it may be bound a moment
/// later by the service another test starts on it (seen: a sink's readiness probe answered by
/// another test's broker). A claim is a file naming the claiming process; one whose process is
/// gone is taken over.
fn claim_port(port: u16) -> bool {
    use std::io::Write as _;
    let dir = std::env::temp_dir().join("blog-e2e-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    let path = dir.join(port.to_string());
    let create = || std::fs::OpenOptions::new().write(true).create_new(true).open(&path);
    let claimed = match create() {
        Ok(file) => Some(file),
        Err(_) => {
            let holder: Option<u32> = std::fs::read_to_string(&path).ok().and_then(|pid| pid.trim().parse().ok());
            let holder_gone = holder.is_none_or(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
            (holder_gone && std::fs::remove_file(&path).is_ok()).then(create).and_then(Result::ok)
        }
    };
    claimed.is_some_and(|mut file| write!(file, "{}", std::process::id()).is_ok())
}

/// The first port of `net.ipv4.ip_local_port_range`.
fn ephemeral_range_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

fn os_assigned_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("the OS hands out a free port")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_metric_sums_its_label_sets_and_never_a_longer_name() {
        let text = "# HELP x_total X\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_total_more 100\ny 7\n";
        assert_eq!(super::metric(text, "x_total"), 5.0);
        assert_eq!(super::metric(text, "y"), 7.0);
        assert_eq!(super::metric(text, "absent"), 0.0);
    }
}
