//! SIGTERM and Ctrl-C (SIGINT): the two ways an operator or a supervisor stops a program.

use tokio::signal::unix::{signal, SignalKind};

/// Waits for SIGTERM or Ctrl-C; returns which (`"SIGTERM"` or `"Ctrl-C"`). If the SIGTERM
/// handler cannot be installed, waits for Ctrl-C alone.
pub async fn signal_received() -> &'static str {
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "Ctrl-C";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}

/// Signal handling for a program without an async runtime: a thread calls `on_signal` with
/// `"SIGTERM"` or `"Ctrl-C"` for every signal until `on_signal` returns `false` or the
/// returned [`Signals`] is dropped. The handlers are installed before this returns, so a
/// signal right after it is not lost.
pub fn on_signals(
    mut on_signal: impl FnMut(&'static str) -> bool + Send + 'static,
) -> std::io::Result<Signals> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut int, mut term) = rt.block_on(async {
        Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
    })?;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                loop {
                    let sig = tokio::select! {
                        _ = int.recv() => "Ctrl-C",
                        _ = term.recv() => "SIGTERM",
                        _ = &mut stop_rx => return,
                    };
                    if !on_signal(sig) {
                        return;
                    }
                }
            })
        })?;
    Ok(Signals {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// The signal thread of [`on_signals`]; dropping it stops the thread (the handlers stay
/// installed: a later signal no longer ends the process by default).
#[derive(Debug)]
pub struct Signals {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Signals {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_sigterm_reaches_the_callback() {
        let (tx, rx) = mpsc::channel();
        let signals = super::on_signals(move |s| tx.send(s).is_ok()).unwrap();
        // SAFETY: kill(2) of our own process with a signal whose handler is installed.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("SIGTERM"));
        drop(signals);
    }
}
