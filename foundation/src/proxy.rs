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
                            // Every cut from here on ends this connection: the receiver is
                            // marked before `down` is read, and `set_down` sets `down` before
                            // it cuts, so a connection accepted as the link goes down is either
                            // refused here or cut. (Marking it later, in `pipe` after the
                            // upstream connect, lost a cut that came meanwhile: the bridge's
                            // first connection then outlived `link(false)` and kept forwarding.)
                            let mut cut = cut_rx.clone();
                            cut.mark_unchanged();
                            if d.load(Ordering::SeqCst) {
                                drop(inbound); // link down: refuse by closing at once
                                continue;
                            }
                            a.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(pipe(inbound, upstream, cut));
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
    let mut outbound = tokio::select! {
        c = TcpStream::connect(upstream) => match c {
            Ok(c) => c,
            Err(_) => return,
        },
        _ = cut.changed() => return,
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    /// A cut while the proxy is still connecting upstream ends that connection too (it used to
    /// be lost: the connection then outlived `set_down(true)`).
    #[test]
    fn a_cut_during_the_upstream_connect_is_not_lost() {
        // An upstream whose accept queue is full: a new connect to it hangs (its SYN dropped).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let upstream = rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            s.listen(1).unwrap()
        });
        let addr = upstream.local_addr().unwrap();
        let mut queued = Vec::new();
        while let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            queued.push(c);
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        let proxy = Proxy::start(addr).unwrap();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        crate::wait::until(
            Duration::from_secs(10),
            "the proxy to take the connection",
            || (proxy.accepted() == 1).then_some(()),
        )
        .unwrap();
        proxy.set_down(true);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("the connection outlived the cut: {other:?}"),
        }
        drop(proxy);
        drop(upstream);
    }
}
