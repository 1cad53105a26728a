//! `dynamo-server serve`: one node from its configuration, until SIGINT
//! or SIGTERM, then a graceful stop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dynamo_core::gossip::GossipSettings;
use dynamo_core::member::NodeId;
use dynamo_core::membership::{MemberInfo, MemberStatus, StaticMembership};
use dynamo_core::node::NodeBuilder;
use dynamo_core::ring::Ring;
use dynamo_core::Error;

use crate::config::{HttpConfig, MemberConfig, ServerConfig};
use crate::http::{router, AppState};
use crate::http_listener::{ClientSecurity, HttpLimits};
use crate::metrics::ServerMetrics;
use crate::plugins::Plugins;
use crate::tokens::TokenStore;

/// Sets up `tracing` output: `RUST_LOG` if set, else the config's filter;
/// text or JSON lines on stderr.
pub fn init_logging(config: &crate::config::LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.filter));
    // Colours only on a terminal: `dev` sends each node's output to a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if config.format == "json" { builder.json().try_init() } else { builder.try_init() };
}

/// Runs one node until SIGINT or SIGTERM; see [`serve_until`].
///
/// # Errors
/// Anything that prevents the node from starting, with context.
pub async fn serve(config: ServerConfig, plugins: &Plugins, adopt_ring: bool) -> anyhow::Result<()> {
    serve_until(config, plugins, adopt_ring, shutdown_signal()).await
}

/// Runs one node until `shutdown` resolves: stops accepting, finishes
/// in-flight requests, stops the node and closes the store. With
/// `adopt_ring`, a store written under another ring is accepted (see
/// [`NodeBuilder::adopt_ring`]); without it, such a start is refused.
///
/// Every check comes before the disk is touched: the configuration's
/// names (reconciler, engines), the ring, then both listening addresses;
/// only then is the store opened. The HTTP port is bound first, so a
/// client that connects while the store opens is answered once the node
/// is ready rather than refused.
///
/// # Errors
/// Anything that prevents the node from starting, with context.
pub async fn serve_until(
    config: ServerConfig,
    plugins: &Plugins,
    adopt_ring: bool,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let reconciler = plugins.check(&config)?;
    // The configured members make the founding ring; a node with only
    // seeds learns the ring from them.
    let ring = if config.members.is_empty() && config.gossips() {
        None
    } else {
        Some(
            Ring::new(config.cluster.partitions, config.cluster.n, config.ring_members())
                .context("invalid cluster membership")?,
        )
    };
    // Client tokens and TLS: checked before anything is bound or opened.
    let mut security = ClientSecurity {
        tokens: crate::auth::load_tokens(&config.http)?,
        tls: http_tls(&config.http)?,
        refusals: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {} (http.listen)", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let transport = plugins.open_transport(&config).await?;
    // Opening may read and verify the whole store file: off the async workers.
    let store = {
        let config = config.clone();
        let plugins = plugins.clone();
        tokio::task::spawn_blocking(move || plugins.open_store(&config))
            .await
            .context("opening the store")??
    };
    let builder = NodeBuilder::new(NodeId(config.node_id)).config(config.cluster.clone());
    let builder = membership(builder, &config, ring, &http_addr.to_string())?;
    let node = builder
        .store(store)
        .transport(transport)
        .reconciler(reconciler)
        .adopt_ring(adopt_ring)
        .start()
        .await
        .map_err(|e| match e {
            Error::RingMismatch { .. } => anyhow::anyhow!("{e} (`serve --adopt-ring`)"),
            e => e.into(),
        })
        .with_context(|| format!("cannot start node {} on {}", config.node_id, config.data_dir.display()))?;
    let state = Arc::new(AppState {
        node: node.clone(),
        metrics: ServerMetrics::with_request_timeout(config.cluster.request_timeout()),
    });
    security.refusals = state.metrics.http_refusals();
    let data_dir = std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    tracing::info!(
        node = config.node_id,
        http = %http_addr,
        peer = %config.peer_advertise(),
        store = %config.store.engine,
        durability = ?config.store.durability,
        reconciler = %config.reconciler,
        data_dir = %data_dir.display(),
        "node ready"
    );
    #[cfg(unix)]
    tokio::spawn(reload_tokens_on_hangup(security.tokens.clone()));
    let limits = HttpLimits::new(&config.http, Duration::from_millis(config.cluster.request_timeout_ms));
    crate::http_listener::serve_secured(listener, router(state), limits, security, shutdown).await;
    tracing::info!(node = config.node_id, "shutting down: in-flight requests finished");
    // Waits for writes in flight, marks the store cleanly shut down and
    // flushes it: buffered writes reach the disk before the process exits.
    match node.shutdown().await {
        Ok(()) => tracing::info!(node = config.node_id, "store flushed; stopped"),
        Err(e) => tracing::error!(
            node = config.node_id,
            error = %e,
            "clean shutdown failed: buffered writes may be lost from this node's copy; the next start counts as a crash"
        ),
    }
    Ok(())
}

/// Gives the builder the node's membership: gossip when `cluster.seeds`
/// lists peers (starting from `ring`, the configured members, if any),
/// else the fixed member list of `ring`.
fn membership(
    builder: NodeBuilder,
    config: &ServerConfig,
    ring: Option<Ring>,
    http_addr: &str,
) -> anyhow::Result<NodeBuilder> {
    let id = NodeId(config.node_id);
    let http_of = |m: &MemberConfig| m.http.clone();
    let me = config.members.iter().find(|m| m.id == config.node_id);
    if !config.gossips() {
        let ring = ring.context("a node with no seeds needs a member list")?;
        let addrs: BTreeMap<NodeId, String> =
            config.members.iter().filter_map(|m| Some((NodeId(m.id), http_of(m)?))).collect();
        let membership =
            StaticMembership::with_client_addrs(id, ring, addrs).context("invalid cluster membership")?;
        return Ok(builder.membership(Arc::new(membership)));
    }
    let local = MemberInfo {
        id,
        addr: config.peer_advertise(),
        client_addr: Some(me.and_then(http_of).unwrap_or_else(|| format!("http://{http_addr}"))),
        zone: me.and_then(|m| m.zone.clone()),
        capacity: me.map_or(1, |m| m.capacity),
        status: MemberStatus::Joining,
    };
    Ok(builder.gossip(GossipSettings { local, initial_ring: ring }))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The HTTP port's TLS configuration from `[http.tls]`, its files read and
/// checked; `None` (plaintext HTTP) without it.
///
/// # Errors
/// A file unreadable or open to other users, or a key that does not match
/// the certificate; or `[http.tls]` in a build without the tcp transport,
/// whose TLS loader it uses.
fn http_tls(http: &HttpConfig) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let Some(tls) = &http.tls else {
        tracing::info!(http = %http.listen, "HTTP API: plaintext (no [http.tls])");
        return Ok(None);
    };
    #[cfg(feature = "transport-tcp")]
    {
        let config =
            dynamo_transport_tcp::server_config(&tls.cert_file, &tls.key_file).context("http.tls")?;
        tracing::info!(http = %http.listen, cert = %tls.cert_file.display(), "HTTP API: TLS 1.3");
        Ok(Some(config))
    }
    #[cfg(not(feature = "transport-tcp"))]
    anyhow::bail!(
        "http.tls needs the transport-tcp feature (its TLS loader); {} was not loaded",
        tls.cert_file.display()
    )
}

/// Reloads the tokens file at every SIGHUP, for as long as the node runs:
/// created and revoked tokens take effect without a restart. A file that
/// does not check out is reported, and the tokens in use stay. Without a
/// tokens file a SIGHUP is only logged (it never stops the node, as its
/// default action would).
#[cfg(unix)]
async fn reload_tokens_on_hangup(store: Option<Arc<TokenStore>>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for SIGHUP: the tokens file is read at start only");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let Some(store) = &store else {
            tracing::info!("SIGHUP: no http.tokens_file, nothing to reload");
            continue;
        };
        // Reading the file is disk work: off the async workers.
        let reloading = Arc::clone(store);
        let reloaded = tokio::task::spawn_blocking(move || reloading.reload()).await;
        let file = store.path().display();
        match reloaded {
            Ok(Ok(tokens)) => tracing::info!(%file, tokens, "SIGHUP: tokens file reloaded"),
            Ok(Err(e)) => {
                tracing::error!(%file, error = %e, "SIGHUP: tokens file NOT reloaded; the tokens in use stay")
            }
            Err(e) => {
                tracing::error!(%file, error = %e, "SIGHUP: the reload task failed; the tokens in use stay")
            }
        }
    }
}
