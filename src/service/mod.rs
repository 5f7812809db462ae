//! The scheduler as a service: the MoS scheduler alone (no trainer, no loaders) behind a small
//! authenticated HTTP/JSON API, for hosts that train in another process or language and only
//! want the learned mixture.
//!
//! A client registers its datasets once (names and sizes: they define the prior), then per update
//! posts probe statistics (per-example NLLs or perplexities for DIFF, per-dataset embeddings for
//! COSSIM) or ready-made rewards, and reads the mixture back. The maths is the built-in path's
//! [`crate::mixture::Strategy`], so the same statistics give bit-identical mixtures.
//! `docs/openapi.yaml` describes every endpoint; the `mos_client` package in `clients/python/` is its Python client.
//!
//! Guarantees (see `core.rs` for how they are kept):
//! - writes need the bearer token; reads do not. A token is always required to start, and the
//!   default listen address is loopback;
//! - a refused request changes nothing: version, mixture, EMA state and history are as before;
//! - updates are applied one at a time in arrival order; the mixture version is the number of
//!   accepted updates; a `step` below the last accepted one is refused (409), so the history's
//!   steps never go backwards; reads of the mixture are lock-free;
//! - an update is accepted only if its rewards lie in their family's accepted range and the
//!   scheduler state it leaves is sound (finite, able to move, no probability of exactly 0), so
//!   no accepted request can freeze the mixture (422 naming the field otherwise);
//! - state lives in memory: a restart starts over from registration. Only the optional
//!   `service.mixture_log` survives, and `mos-runtime replay --log` checks it.
//!
//! This module never installs a tracing subscriber or metrics recorder, and never logs the token.

pub mod api;
mod core;
mod http;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use self::core::{ApiError, ServiceCore};
pub use self::http::{routes, OPENAPI_YAML};
use crate::config::{Config, ConfigError};
use crate::mixture::MixtureSnapshot;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration is invalid (or the token file unreadable).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No bearer token is configured. Writes always need one, so the service refuses to start
    /// rather than accept unauthenticated writes (on a non-loopback address, from anyone).
    #[error(
        "no bearer token for {listen}{exposed}: set service.token_file, or the environment \
         variable MOS_SERVICE_TOKEN (or MOS_SERVICE__TOKEN); every write needs it"
    )]
    NoToken {
        /// The address the service would listen on.
        listen: SocketAddr,
        /// A note when the address is not loopback.
        exposed: &'static str,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {listen} (service.listen): {source}")]
    Bind {
        /// The configured address.
        listen: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("service I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds `service.listen` of `cfg`.
pub async fn bind(cfg: &Config) -> Result<TcpListener, ServiceError> {
    TcpListener::bind(&cfg.service.listen)
        .await
        .map_err(|source| ServiceError::Bind {
            listen: cfg.service.listen.clone(),
            source,
        })
}

/// Starts the service on `listener` inside the current tokio runtime and returns its handle.
/// Uses `[scheduler]` and `[service]` of `cfg` (datasets come from clients) and
/// `runtime.seed` (the MLP scorer's initialisation, derived as a training run derives it). The
/// token comes from `service.token`, `service.token_file` or the process environment
/// ([`crate::config::TOKEN_ENV`]).
pub async fn serve(cfg: &Config, listener: TcpListener) -> Result<ServiceHandle, ServiceError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    serve_with_env(cfg, listener, &env).await
}

/// As [`serve`], with the environment given explicitly (tests, hosts).
pub async fn serve_with_env(
    cfg: &Config,
    listener: TcpListener,
    env: &[(String, String)],
) -> Result<ServiceHandle, ServiceError> {
    cfg.validate_service()?;
    let addr = listener.local_addr()?;
    let token = cfg.service.resolve_token(env).map_err(|e| match e {
        // Name the config file, which the service section itself does not know.
        ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
            file: cfg
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "<config>".to_string()),
            key,
            message,
        },
        other => other,
    })?;
    let Some(token) = token else {
        return Err(ServiceError::NoToken {
            listen: addr,
            exposed: if addr.ip().is_loopback() {
                ""
            } else {
                " (not a loopback address: the scheduler would be writable from the network)"
            },
        });
    };
    let core = ServiceCore::new(
        cfg.scheduler.clone(),
        crate::seed::stream_seed(cfg.runtime.seed, "scheduler"),
        cfg.service.max_datasets,
        cfg.service.mixture_log.as_deref(),
    );
    let app = Arc::new(http::App {
        core: core.clone(),
        token,
        max_body: cfg.service.max_body_bytes,
    });
    let (tx, rx) = oneshot::channel::<()>();
    let server = axum::serve(listener, http::router(app)).with_graceful_shutdown(async move {
        // Either an explicit shutdown or a dropped handle stops the server.
        let _ = rx.await;
    });
    let task = tokio::spawn(async move { server.await });
    Ok(ServiceHandle {
        addr,
        core,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// A running service. Dropping it stops the server (in-flight requests finish first).
#[derive(Debug)]
pub struct ServiceHandle {
    addr: SocketAddr,
    core: Arc<ServiceCore>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl ServiceHandle {
    /// The address the service listens on (useful after binding port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The state machine behind the API, for in-process readers (lock-free mixture reads,
    /// subscriptions).
    pub fn core(&self) -> &Arc<ServiceCore> {
        &self.core
    }

    /// The current mixture; `None` before datasets are registered.
    pub fn mixture(&self) -> Option<Arc<MixtureSnapshot>> {
        self.core.mixture()
    }

    /// Stops accepting connections, lets in-flight requests finish, and waits for the server.
    pub async fn shutdown(mut self) -> Result<(), ServiceError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join().await
    }

    /// Waits until the server stops (after [`ServiceHandle::shutdown`] from elsewhere, or an
    /// I/O failure).
    async fn join(&mut self) -> Result<(), ServiceError> {
        match self.task.take() {
            Some(t) => t
                .await
                .map_err(|e| ServiceError::Io(std::io::Error::other(e)))?
                .map_err(ServiceError::Io),
            None => Ok(()),
        }
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
