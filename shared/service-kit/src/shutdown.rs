//! One shutdown signal for every binary: SIGINT (Ctrl-C) or SIGTERM cancel a token that every
//! task of the service watches.

use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A token cancelled when the process is asked to stop.
pub fn token_cancelled_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        signal().await;
        trigger.cancel();
    });
    token
}

/// Sleeps for `duration` unless `token` is cancelled first; returns false when cancelled.
pub async fn sleep_unless_cancelled(token: &CancellationToken, duration: std::time::Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        () = token.cancelled() => false,
    }
}

/// The `main` of a service binary: parses its command line (`--help` and errors exit here;
/// secrets may come from files, see [`crate::config::parse_with_secret_files`]),
/// starts telemetry, and runs `run` on a multi-threaded runtime with a token cancelled on SIGINT
/// or SIGTERM; traces are flushed when it returns. The allocator is limited first, before any
/// thread starts ([`crate::memory`]).
pub fn run_binary<C: clap::Parser>(
    name: &str,
    run: impl AsyncFnOnce(C, CancellationToken) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    crate::memory::limit_allocator_arenas();
    let cli = crate::config::parse_with_secret_files::<C>();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let _telemetry = runtime.block_on(async { crate::telemetry::init(name) });
    runtime.block_on(async { run(cli, token_cancelled_on_signal()).await })
}
