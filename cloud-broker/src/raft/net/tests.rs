//! The Raft port against bytes no peer should send: each costs its own connection (or, for a
//! request that does not decode, its own refusal), never the listener or another peer.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

fn frame(kind: u8, group: u64, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((17 + payload.len()) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&group.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn hello(cluster: &str, node: NodeId) -> Vec<u8> {
    frame(
        Kind::Hello as u8,
        0,
        0,
        &to_bytes(&Hello {
            cluster: cluster.into(),
            node,
        }),
    )
}

/// Whether the server closes the connection after `bytes` (within a few seconds), the client
/// hanging up its sending side after them (`hang_up`) or staying silent.
async fn closed_after(addr: SocketAddr, bytes: &[u8], hang_up: bool) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if hang_up {
        s.shutdown().await.unwrap();
    }
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(HELLO_DEADLINE * 3, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_on_the_raft_port_cost_only_their_connection() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let groups = Groups::default();
    groups.retire([9]);
    let server = tokio::spawn(serve(listener, "plant".into(), 2, groups, Heard::default(), None));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", vec![0xff; 64]),
        (
            "a frame shorter than its header",
            frame(0, 0, 0, &[]).split_at(3).0.to_vec(),
        ),
        ("another cluster", hello("elsewhere", 1)),
        ("this node's own id", hello("plant", 2)),
        ("a retired node", hello("plant", 9)),
        (
            "an unknown kind",
            [hello("plant", 1), frame(200, 0, 1, &[])].concat(),
        ),
        (
            "a frame over the limit",
            [hello("plant", 1), ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec()].concat(),
        ),
        (
            // Claims 200 MiB, sends ten bytes and hangs up: read as it arrives, never reserved.
            "a large frame cut short",
            [
                hello("plant", 1),
                (200u32 << 20).to_be_bytes().to_vec(),
                vec![Kind::Append as u8; 10],
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in &cases {
        assert!(
            closed_after(addr, bytes, true).await,
            "{what}: the connection stayed open"
        );
    }
    // A connection that never says who it is is dropped after a deadline.
    for (what, bytes) in [
        ("silence", Vec::new()),
        ("half a hello", hello("plant", 1)[..5].to_vec()),
    ] {
        assert!(
            closed_after(addr, &bytes, false).await,
            "{what}: the connection stayed open"
        );
    }

    // A request that does not decode is refused on its own; the connection goes on.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&hello("plant", 1)).await.unwrap();
    s.write_all(&frame(Kind::StreamAppend as u8, 7, 41, b"\xff\xff\xff"))
        .await
        .unwrap();
    s.write_all(&frame(Kind::Append as u8, 7, 42, b"\x01"))
        .await
        .unwrap();
    s.write_all(&frame(Kind::Ping as u8, 0, 43, &[])).await.unwrap();
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 3 {
        let f = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s))
            .await
            .expect("an answer")
            .unwrap()
            .expect("a frame");
        answers.insert(f.id, f.kind);
    }
    assert_eq!(answers[&41], Kind::Failed);
    assert_eq!(answers[&42], Kind::Failed);
    assert_eq!(answers[&43], Kind::Reply);

    // And a proper peer is served throughout.
    let net = Network::new("plant", 1);
    assert!(net.ping(2, &addr.to_string(), Duration::from_secs(5)).await);
    server.abort();
}

/// Mutual TLS on the Raft port: a peer with its own node certificate is answered; one whose
/// certificate names another node than its hello claims, one from another CA, and a
/// plaintext one are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_only_the_node_a_certificate_names_is_a_peer() {
    use foundation::tls::{DevCa, Role};
    let dir = std::env::temp_dir().join(format!("raft-tls-{}", foundation::ids::random_u64()));
    let ca = DevCa::open_or_create(&dir, "cluster CA").unwrap();
    let host = ["127.0.0.1".to_string()];
    for id in 1..=3 {
        ca.issue(&format!("node-{id}"), &format!("node-{id}"), &host, Role::Node, 1)
            .unwrap();
    }
    let other = DevCa::open_or_create(&dir.join("other"), "another CA").unwrap();
    other.issue("node-3", "node-3", &host, Role::Node, 1).unwrap();
    let tls = |d: &std::path::Path, id: u64| {
        let (c, k) = (d.join(format!("node-{id}.pem")), d.join(format!("node-{id}.key")));
        Some(Arc::new(RaftTls::new(&c, &k, &d.join("ca.pem")).unwrap()))
    };
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(serve(
        listener,
        "plant".into(),
        1,
        Groups::default(),
        Heard::default(),
        tls(&dir, 1),
    ));
    let ttl = Duration::from_secs(5);
    // Node 3 with its own certificate.
    let ok = Network::new("plant", 3).with_tls(tls(&dir, 3));
    assert!(ok.ping(1, &addr, ttl).await, "a peer with its own certificate");
    // Node 2 presenting node 3's certificate.
    let imposter = Network::new("plant", 2).with_tls(tls(&dir, 3));
    assert!(
        !imposter.ping(1, &addr, ttl).await,
        "a certificate naming another node"
    );
    // Node 3's name from another CA (its client side trusts that CA, so the server's
    // certificate fails its check as well as the other way round).
    let foreign = {
        let d = dir.join("other");
        let (c, k) = (d.join("node-3.pem"), d.join("node-3.key"));
        Arc::new(RaftTls::new(&c, &k, &dir.join("ca.pem")).unwrap())
    };
    assert!(
        !Network::new("plant", 3)
            .with_tls(Some(foreign))
            .ping(1, &addr, ttl)
            .await
    );
    // Plaintext.
    assert!(
        !Network::new("plant", 3).ping(1, &addr, ttl).await,
        "a plaintext peer"
    );
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
