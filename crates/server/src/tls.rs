//! The node's TLS front: every TLS listener (gRPC, MLLP over TLS) takes its handshakes
//! here. A [`ServerTls`] holds a configuration rebuilt from the node's files when they
//! change (CA bundle, node certificate and key, CRL: `sealpost_crypto::tls::
//! ReloadingServerTls`), polled every `api.tls_reload_ms`, so a rotated certificate, a new
//! trust bundle or a revocation applies to the next connection without a restart. Each
//! handshake is bounded in time; a refused one is counted by reason (no certificate,
//! expired, unknown CA, revoked, other, timed out) so tests and metrics can tell why.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::CertificateError;
use sealpost_crypto::tls::{ClientCerts, ReloadingServerTls, TlsPaths};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete its TLS handshake.
pub const TLS_HANDSHAKE_MS_MAX: u64 = 10_000;

/// Why a TLS handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoCertificate,
    Expired,
    UnknownCa,
    Revoked,
    TimedOut,
    Other,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no-certificate",
            Refusal::Expired => "expired",
            Refusal::UnknownCa => "unknown-ca",
            Refusal::Revoked => "revoked",
            Refusal::TimedOut => "timed-out",
            Refusal::Other => "other",
        }
    }

    fn of(e: &std::io::Error) -> Refusal {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return Refusal::Other;
        };
        match tls {
            rustls::Error::NoCertificatesPresented => Refusal::NoCertificate,
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Refusal::Expired
                }
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Refusal::UnknownCa
                }
                CertificateError::Revoked => Refusal::Revoked,
                _ => Refusal::Other,
            },
            _ => Refusal::Other,
        }
    }
}

/// Handshakes accepted and refused (by reason) on one listener.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    pub accepted: AtomicU64,
    pub no_certificate: AtomicU64,
    pub expired: AtomicU64,
    pub unknown_ca: AtomicU64,
    pub revoked: AtomicU64,
    pub timed_out: AtomicU64,
    pub other: AtomicU64,
    /// Reloads of the TLS files that took effect, and those that failed.
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl HandshakeStats {
    fn counter(&self, r: Refusal) -> &AtomicU64 {
        match r {
            Refusal::NoCertificate => &self.no_certificate,
            Refusal::Expired => &self.expired,
            Refusal::UnknownCa => &self.unknown_ca,
            Refusal::Revoked => &self.revoked,
            Refusal::TimedOut => &self.timed_out,
            Refusal::Other => &self.other,
        }
    }

    /// Handshakes refused for `r` so far.
    pub fn refused(&self, r: Refusal) -> u64 {
        self.counter(r).load(Ordering::Relaxed)
    }
}

/// Called after the files changed and a new configuration took effect.
type OnChange = Arc<std::sync::Mutex<Option<Box<dyn Fn() + Send + Sync>>>>;

/// A listener's TLS: the reloading configuration and its handshake counters.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ReloadingServerTls>,
    pub stats: Arc<HandshakeStats>,
    on_change: OnChange,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files; `alpn` lists the application protocols offered (`h2` for gRPC).
    pub fn load(paths: &TlsPaths, alpn: &[&[u8]]) -> Result<Self, sealpost_crypto::Error> {
        Self::load_with(paths, alpn, ClientCerts::Required)
    }

    /// [`Self::load`] with the given client certificate policy.
    pub fn load_with(
        paths: &TlsPaths,
        alpn: &[&[u8]],
        client_certs: ClientCerts,
    ) -> Result<Self, sealpost_crypto::Error> {
        Ok(Self {
            config: Arc::new(ReloadingServerTls::load_with(
                paths.clone(),
                alpn,
                client_certs,
            )?),
            stats: Arc::default(),
            on_change: Arc::default(),
        })
    }

    /// Runs `f` each time a changed set of files takes effect (the node reconnects its
    /// peers with the rotated identity).
    pub fn on_change(&self, f: impl Fn() + Send + Sync + 'static) {
        *self
            .on_change
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(f));
    }

    /// Completes the server side of a handshake on `stream`, within
    /// [`TLS_HANDSHAKE_MS_MAX`], with the newest configuration.
    pub async fn accept<S>(&self, stream: S) -> Result<TlsStream<S>, Refusal>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        let outcome = tokio::time::timeout(
            Duration::from_millis(TLS_HANDSHAKE_MS_MAX),
            acceptor.accept(stream),
        )
        .await;
        let refusal = match outcome {
            Ok(Ok(s)) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                return Ok(s);
            }
            Ok(Err(e)) => {
                let r = Refusal::of(&e);
                tracing::debug!(reason = r.as_str(), error = %e, "TLS handshake refused");
                r
            }
            Err(_) => Refusal::TimedOut,
        };
        self.stats.counter(refusal).fetch_add(1, Ordering::Relaxed);
        Err(refusal)
    }

    /// Reads the TLS files again if they changed (the reloader's poll; tests call it to
    /// apply a change at once). `true` when a new configuration is in force.
    pub fn reload_if_changed(&self) -> bool {
        match self.config.reload_if_changed() {
            Ok(true) => {
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("TLS files changed: new connections use the new configuration");
                if let Some(f) = self
                    .on_change
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .as_ref()
                {
                    f();
                }
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "TLS files changed but do not load; the previous configuration stays in force");
                false
            }
        }
    }

    /// Polls the files every `every` until `shutdown` turns true.
    pub fn spawn_reloader(
        &self,
        every: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        crate::spawn_every(every, shutdown, move || {
            let me = me.clone();
            async move {
                // File reads and certificate parsing are blocking work.
                let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
            }
        })
    }
}
