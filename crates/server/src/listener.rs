//! The node's listener: accepts TCP connections for the gRPC server up to a cap
//! (`api.connections_max`). At the cap it stops accepting until a connection closes, so a
//! flood of clients waits in the kernel's backlog instead of exhausting file descriptors
//! and memory; each accepted connection carries its slot and gives it back when dropped.
//! [`tls_incoming`] adds the TLS handshake, run beside the accept loop (at most
//! `HANDSHAKES_IN_FLIGHT_MAX` at once, each bounded in time) so a slow or hostile client
//! never holds up the next one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Pause after a failed accept (out of file descriptors, say) before trying again.
pub const ACCEPT_RETRY_MS: u64 = 50;

/// An accepted connection holding one of the listener's slots.
pub struct Limited {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connections `listener` accepts, at most `connections_max` open at once, with
/// Nagle's algorithm off.
pub fn incoming(
    listener: TcpListener,
    connections_max: usize,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(connections_max));
    futures::stream::unfold((listener, slots), |(listener, slots)| async move {
        // Waiting here, before accepting, is what leaves new clients in the backlog.
        let slot = slots.clone().acquire_owned().await.ok()?;
        let accepted = match listener.accept().await {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot turn Nagle off on a connection");
                }
                Ok(Limited {
                    inner: stream,
                    _slot: slot,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                Err(e)
            }
        };
        Some((accepted, (listener, slots)))
    })
}

/// TLS handshakes in progress at once on one listener.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;

/// [`incoming`] with each connection's TLS handshake done (refused ones are dropped and
/// counted by `tls`): what tonic serves when the node, not tonic, terminates TLS.
pub fn tls_incoming(
    listener: TcpListener,
    connections_max: usize,
    tls: crate::tls::ServerTls,
) -> impl Stream<Item = io::Result<tokio_rustls::server::TlsStream<Limited>>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(HANDSHAKES_IN_FLIGHT_MAX);
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    tokio::spawn(async move {
        use futures::StreamExt;
        let mut conns = Box::pin(incoming(listener, connections_max));
        loop {
            let next = tokio::select! {
                c = conns.next() => c,
                // The server is gone: stop accepting.
                _ = tx.closed() => return,
            };
            let conn = match next {
                Some(Ok(c)) => c,
                Some(Err(_)) => continue,
                None => return,
            };
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let tls = tls.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(stream) = tls.accept(conn).await {
                    let _ = tx.send(Ok(stream)).await;
                }
                drop(permit);
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    /// At the cap the listener accepts nothing more until an accepted connection closes.
    #[tokio::test]
    async fn accepts_no_more_than_the_cap_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut conns = Box::pin(incoming(listener, 2));
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let wait = Duration::from_secs(5);
        let first = tokio::time::timeout(wait, conns.next())
            .await
            .expect("first accepted")
            .expect("stream open")
            .expect("accepted");
        let _second = tokio::time::timeout(wait, conns.next())
            .await
            .expect("second accepted")
            .expect("stream open")
            .expect("accepted");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), conns.next())
                .await
                .is_err(),
            "a third connection was accepted over the cap of two"
        );
        drop(first);
        let third = tokio::time::timeout(wait, conns.next())
            .await
            .expect("accepted once a slot is free")
            .expect("stream open")
            .expect("accepted");
        assert!(third.connect_info().remote_addr().is_some());
    }
}
