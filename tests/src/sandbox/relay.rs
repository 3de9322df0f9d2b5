//! A TCP relay from the sandbox's fixed API address to the API server, which
//! binds an ephemeral port of its own. Bytes are copied both ways unchanged,
//! so watches and log streams pass through as they are.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay; stops accepting (and ends its connections) on drop.
pub struct Relay {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Relay {
    /// Listens on `listen` and forwards every connection to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept(listener, target, stopped));
        Ok(Self { addr, stop })
    }

    /// The address clients use.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, stopped: watch::Receiver<bool>) {
    let mut until_stopped = stopped.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    tokio::spawn(pipe(client, target, stopped.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox API relay accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = until(&mut until_stopped) => return,
        }
    }
}

async fn pipe(mut client: TcpStream, target: SocketAddr, mut stopped: watch::Receiver<bool>) {
    let mut server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%target, error = %e, "sandbox API relay cannot reach the API server");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = until(&mut stopped) => {}
    }
}

/// Resolves once the relay is stopped (its guard never crosses an await).
async fn until(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let relay = Relay::start("127.0.0.1:0".parse().unwrap(), target)
            .await
            .unwrap();
        let mut c = TcpStream::connect(relay.addr()).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
    }
}
