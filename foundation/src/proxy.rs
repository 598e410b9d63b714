//! A TCP proxy that can cut its links: the link-fault injector for device tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy from a loopback port to `upstream`, running on its own thread.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    cut_tx: watch::Sender<u64>,
    down: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts proxying new connections on a free port to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        Self::start_on(0, upstream)
    }

    /// Starts proxying new connections on `127.0.0.1:port` (`0` = a free port) to `upstream`.
    pub fn start_on(port: u16, upstream: SocketAddr) -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let (cut_tx, cut_rx) = watch::channel(0u64);
        let down = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
        let (d, a) = (down.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        Ok((inbound, _)) = listener.accept() => {
                            if d.load(Ordering::SeqCst) {
                                drop(inbound); // link down: refuse by closing at once
                                continue;
                            }
                            a.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(pipe(inbound, upstream, cut_rx.clone()));
                        }
                    }
                }
            });
        });
        Ok(Proxy {
            port,
            cut_tx,
            down,
            accepted,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every open connection, both sides, at once.
    pub fn cut(&self) {
        self.cut_tx.send_modify(|g| *g += 1);
    }

    /// While down, new connections are closed as soon as they are accepted.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut();
        }
    }

    /// Connections accepted (and forwarded) so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn pipe(mut inbound: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<u64>) {
    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    cut.mark_unchanged();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.changed() => {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
