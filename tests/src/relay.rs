//! A TCP relay between the hub and a service, which a test can cut, stall
//! and restore: the hub then sees what it sees when the service's host goes
//! away (connections reset, new ones refused) or hangs (connections accepted
//! and never answered), while the shared local service keeps running for
//! every other test.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    Cut,
    Stalled,
}

/// A running relay to `target`.
pub struct Relay {
    pub addr: SocketAddr,
    state: Arc<watch::Sender<State>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, _) = watch::channel(State::Up);
        let state = Arc::new(state);
        let accepting = state.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut changes = accepting.subscribe();
                let now = *changes.borrow();
                match now {
                    State::Cut => drop(inbound),
                    State::Stalled => {
                        // Hold the connection open, say nothing, until cut.
                        tokio::spawn(async move {
                            let _ = changes.wait_for(|s| *s == State::Cut).await;
                            let _ = inbound.set_zero_linger();
                        });
                    }
                    State::Up => {
                        tokio::spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(target).await else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = changes.wait_for(|s| *s == State::Cut) => {
                                    // Reset rather than close, as a vanished host does.
                                    let _ = inbound.set_zero_linger();
                                }
                            }
                        });
                    }
                }
            }
        });
        Self { addr, state }
    }

    /// Reset every connection and refuse new ones.
    pub fn cut(&self) {
        self.state.send_replace(State::Cut);
    }

    /// Accept new connections and never answer on them.
    pub fn stall(&self) {
        self.state.send_replace(State::Stalled);
    }

    /// Relay again (new connections).
    pub fn restore(&self) {
        self.state.send_replace(State::Up);
    }
}
