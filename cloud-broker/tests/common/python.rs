//! Python Kafka clients from `.venv/` (made by `scripts/setup` from
//! `tests/python/requirements.txt`): running the scenario scripts of `tests/python/`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest a script may run before it is killed (each has its own, shorter deadlines).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

pub fn python() -> PathBuf {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup (it makes .venv/ with kafka-python and confluent-kafka)",
        py.display()
    );
    py
}

/// Runs `tests/python/<script>` with `args`; panics with its output unless it exits 0.
pub fn run_script(script: &str, args: &[&str]) -> String {
    run_script_with(script, args, |_| None)
}

/// Like [`run_script`], calling `on_line` with every line the script prints; what it returns
/// is written to the script's stdin as a line.
pub fn run_script_with(
    script: &str,
    args: &[&str],
    mut on_line: impl FnMut(&str) -> Option<String>,
) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut child = Command::new(python())
        .arg(&path)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut stdin = child.stdin.take().unwrap();
    // Both pipes are drained on threads so that a chatty script cannot block on a full pipe.
    let (tx, lines) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let mut out = String::new();
    let mut timed_out = false;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if let Some(reply) = on_line(&line) {
                    let _ = writeln!(stdin, "{reply}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    drop(stdin);
    let status = child.wait().unwrap();
    let err = err.join().unwrap();
    if timed_out {
        panic!("{script} {args:?} still running after {SCRIPT_TIMEOUT:?}; killed:\n{out}{err}");
    }
    assert!(
        status.success(),
        "{script} {args:?} failed ({status}):\n{out}{err}"
    );
    eprint!("{out}");
    out
}
