//! Hostile and careless clients against the Kafka listener's limits (`[limits]`): a silent
//! connection and a half-sent frame are closed by their deadlines; connections past the caps
//! (in all, per address) are refused at once while other addresses are served; a client that
//! announces large frames and trickles them holds no more request memory than the pool, and
//! small requests from others go on meanwhile. Each hit is counted on `/metrics`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_port, tempdir, Broker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn broker(tag: &str, limits: &str) -> (Broker, std::path::PathBuf) {
    let dir = tempdir(tag);
    let cfg = dir.join("cloud.toml");
    // No monitor or registry: their own connections would count against the caps.
    std::fs::write(
        &cfg,
        format!("schema_registry = false\n[monitor]\nenabled = false\n[limits]\n{limits}\n"),
    )
    .unwrap();
    let b = Broker::start_with(
        &dir.join("data"),
        free_port(),
        free_port(),
        vec!["--config".into(), cfg.to_string_lossy().into_owned()],
    );
    (b, dir)
}

fn metric(b: &Broker, line_prefix: &str) -> Option<f64> {
    let (code, page) = foundation::http::get(&format!("127.0.0.1:{}", b.http), "/metrics").ok()?;
    (code == 200).then_some(())?;
    page.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{local}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// ApiVersions v0 on `s`; whether it was answered within `limit`.
async fn api_versions(s: &mut TcpStream, limit: Duration) -> bool {
    let mut f = Vec::new();
    f.extend_from_slice(&10i32.to_be_bytes());
    f.extend_from_slice(&18i16.to_be_bytes());
    f.extend_from_slice(&0i16.to_be_bytes());
    f.extend_from_slice(&7i32.to_be_bytes());
    f.extend_from_slice(&(-1i16).to_be_bytes());
    let answer = async {
        s.write_all(&f).await.ok()?;
        let len = s.read_i32().await.ok()?;
        let mut body = vec![0u8; usize::try_from(len).ok()?];
        s.read_exact(&mut body).await.ok()?;
        (body[..4] == 7i32.to_be_bytes()).then_some(())
    };
    matches!(tokio::time::timeout(limit, answer).await, Ok(Some(())))
}

/// ApiVersions on `good` every 300 ms until `until` after `t`, each answered.
async fn keep_asking(t: Instant, until: Duration, good: &mut TcpStream) {
    while t.elapsed() < until {
        assert!(api_versions(good, Duration::from_secs(2)).await, "served");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// How long until the broker closes `s` (reads return end of file), at most `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut b = [0u8; 64];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut b)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_and_a_half_sent_frame_are_closed_by_their_deadlines() {
    let (b, dir) = broker("limits-deadlines", "idle_timeout_s = 3\nframe_timeout_s = 1");
    let addr: SocketAddr = b.addr().parse().unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(&100i32.to_be_bytes()).await.unwrap();
    half.write_all(&[0, 18, 0, 0, 0]).await.unwrap();
    let mut good = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    let took = closed_within(&mut half, Duration::from_secs(10))
        .await
        .expect("the half-sent frame's connection is closed");
    assert!(
        took >= Duration::from_millis(800),
        "not before its deadline: {took:?}"
    );
    // A connection that keeps asking is served throughout; the silent one stays open until
    // its idle timeout (3 s), then goes.
    keep_asking(t, Duration::from_secs(2), &mut good).await;
    assert!(
        closed_within(&mut silent, Duration::from_millis(200))
            .await
            .is_none(),
        "open before its idle timeout"
    );
    keep_asking(t, Duration::from_millis(4_500), &mut good).await;
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await.is_some(),
        "closed after its idle timeout"
    );
    assert!(
        api_versions(&mut good, Duration::from_secs(2)).await,
        "the busy one is still open"
    );
    assert_eq!(
        metric(&b, "kafka_connections_closed_total{limit=\"frame_timeout\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&b, "kafka_connections_closed_total{limit=\"idle_timeout\"}"),
        Some(1.0)
    );
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_caps_are_refused_at_once_and_other_addresses_served() {
    let (b, dir) = broker("limits-caps", "max_connections = 6\nmax_connections_per_ip = 4");
    let addr: SocketAddr = b.addr().parse().unwrap();
    let mut ones = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from("127.0.0.1", addr).await;
        assert!(api_versions(&mut s, Duration::from_secs(5)).await);
        ones.push(s);
    }
    // A fifth from the same address: closed at once, before any request is read.
    let mut fifth = connect_from("127.0.0.1", addr).await;
    assert!(closed_within(&mut fifth, Duration::from_secs(5)).await.is_some());
    // Another address is served, up to the cap in all.
    let mut twos = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.2", addr).await;
        assert!(
            api_versions(&mut s, Duration::from_secs(5)).await,
            "another address is served"
        );
        twos.push(s);
    }
    let mut seventh = connect_from("127.0.0.3", addr).await;
    assert!(closed_within(&mut seventh, Duration::from_secs(5))
        .await
        .is_some());
    // A place freed is a place taken again.
    ones.truncate(3);
    let mut again = None;
    for _ in 0..50 {
        let mut s = connect_from("127.0.0.1", addr).await;
        if api_versions(&mut s, Duration::from_secs(2)).await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a connection closed frees its place");
    for s in ones.iter_mut().chain(twos.iter_mut()) {
        assert!(
            api_versions(s, Duration::from_secs(5)).await,
            "the admitted stay served"
        );
    }
    assert!(
        metric(
            &b,
            "kafka_connections_closed_total{limit=\"max_connections_per_ip\"}"
        ) >= Some(1.0)
    );
    assert!(metric(&b, "kafka_connections_closed_total{limit=\"max_connections\"}") >= Some(1.0));
    assert_eq!(metric(&b, "kafka_connections "), Some(6.0));
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_large_frames_hold_only_the_pool_and_small_requests_go_on() {
    let (b, dir) = broker(
        "limits-memory",
        "request_memory_mb = 2\nmax_frame_bytes = 2097152\nframe_timeout_s = 3",
    );
    let addr: SocketAddr = b.addr().parse().unwrap();
    let mut good = TcpStream::connect(addr).await.unwrap();
    assert!(api_versions(&mut good, Duration::from_secs(5)).await);
    // Six clients each announce a 2 MiB request and send 1 MiB of it, then nothing.
    let mut hostile = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&(2i32 << 20).to_be_bytes()).await.unwrap();
        let part = vec![0u8; 1 << 20];
        // The broker stops reading those it has no memory for: the write may not complete.
        let _ = tokio::time::timeout(Duration::from_millis(300), s.write_all(&part)).await;
        hostile.push(s);
    }
    // What they hold is within the pool, and small requests are answered at once.
    let held = metric(&b, "kafka_request_memory_bytes").expect("the gauge");
    assert!(held > 0.0 && held <= (2 << 20) as f64, "held {held}");
    for _ in 0..10 {
        let t = Instant::now();
        assert!(
            api_versions(&mut good, Duration::from_secs(1)).await,
            "a small request answered"
        );
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
    }
    // Their deadline closes them all and returns the memory.
    for s in &mut hostile {
        assert!(closed_within(s, Duration::from_secs(10)).await.is_some());
    }
    foundation::wait::until(Duration::from_secs(5), "the pool to be free", || {
        (metric(&b, "kafka_request_memory_bytes") == Some(0.0)).then_some(())
    })
    .unwrap();
    assert_eq!(
        metric(&b, "kafka_connections_closed_total{limit=\"frame_timeout\"}"),
        Some(6.0)
    );
    assert!(api_versions(&mut good, Duration::from_secs(2)).await);
    drop(b);
    std::fs::remove_dir_all(dir).ok();
}
