//! A TCP relay between the hub and a service, which a test can cut and
//! restore: the hub then sees exactly what it sees when the service's host
//! goes away (connections reset, new ones refused) while the shared local
//! service keeps running for every other test.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay to `target`.
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let accepting = up.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !*accepting.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut cut = accepting.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|up| !up) => {
                            // Reset rather than close, as a vanished host does.
                            let _ = inbound.set_zero_linger();
                        }
                    }
                });
            }
        });
        Self { addr, up }
    }

    /// Reset every connection and refuse new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Accept and relay again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}
