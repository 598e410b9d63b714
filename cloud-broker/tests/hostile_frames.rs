//! Regression: a 14-byte Metadata request claiming 2^31 topics made kafka-protocol reserve
//! ~150 GB; the allocation failed and the whole broker aborted. Hostile frames must only ever
//! cost their own connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use foundation::net::{free_port, listening};
use foundation::process::Guard;
use std::time::Duration;

#[global_allocator]
static ALLOC: cloud_broker::alloc::LazyHuge = cloud_broker::alloc::LazyHuge;

#[test]
fn decoding_a_huge_claimed_array_does_not_abort() {
    // Metadata v1: header (key 3, version 1, correlation 1, null client id), then a topics
    // array claiming i32::MAX entries and nothing after it.
    let mut frame = Vec::new();
    frame.extend_from_slice(&3i16.to_be_bytes());
    frame.extend_from_slice(&1i16.to_be_bytes());
    frame.extend_from_slice(&1i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    frame.extend_from_slice(&i32::MAX.to_be_bytes());
    let r = cloud_broker::protocol::decode(bytes::Bytes::from(frame));
    assert!(r.is_err(), "a truncated body is an error, not an abort");
    // Compact (flexible) arrays claim up to u32::MAX - 1: Metadata v9 with a varint count.
    let mut frame = Vec::new();
    frame.extend_from_slice(&3i16.to_be_bytes());
    frame.extend_from_slice(&9i16.to_be_bytes());
    frame.extend_from_slice(&1i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    frame.push(0); // no tagged fields in the header
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(cloud_broker::protocol::decode(bytes::Bytes::from(frame)).is_err());
}

#[test]
fn the_broker_survives_hostile_frames_and_keeps_serving() {
    let (port, http) = (free_port().unwrap(), free_port().unwrap());
    let dir = std::env::temp_dir().join(format!("cloud-hostile-{}-{port}", std::process::id()));
    let mut b = Guard::spawn(
        "cloud-broker",
        Command::new(env!("CARGO_BIN_EXE_cloud-broker"))
            .args([
                "run",
                "--kafka-listen",
                &format!("127.0.0.1:{port}"),
                "--http-listen",
                &format!("127.0.0.1:{http}"),
            ])
            .arg("--data-dir")
            .arg(&dir)
            .env("CLOUD_LOG", "error"),
    )
    .unwrap();
    b.wait_ready(Duration::from_secs(20), "listening", || listening(port))
        .unwrap();
    let hostile: Vec<Vec<u8>> = vec![
        [
            &3i16.to_be_bytes()[..],
            &1i16.to_be_bytes(),
            &1i32.to_be_bytes(),
            &(-1i16).to_be_bytes(),
            &i32::MAX.to_be_bytes(),
        ]
        .concat(),
        vec![0, 3],                         // shorter than a header
        vec![0x7f, 0, 0, 0, 0, 0, 0, 1],    // unknown api key
        vec![0, 0, 0, 3, 0, 0, 0, 1, 0xff], // produce, truncated
    ];
    for body in hostile {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&(body.len() as i32).to_be_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            s.read(&mut buf).unwrap_or(0),
            0,
            "the hostile connection is closed"
        );
    }
    // A frame length beyond the cap is refused before anything is allocated.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&i32::MAX.to_be_bytes()).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    assert!(b.exited().is_none(), "the broker is still running");
    // And it still serves: ApiVersions v0.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = [
        &18i16.to_be_bytes()[..],
        &0i16.to_be_bytes(),
        &42i32.to_be_bytes(),
        &(-1i16).to_be_bytes(),
    ]
    .concat();
    s.write_all(&(req.len() as i32).to_be_bytes()).unwrap();
    s.write_all(&req).unwrap();
    let mut head = [0u8; 10];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[4..8], &42i32.to_be_bytes(), "correlation id");
    assert_eq!(&head[8..10], &0i16.to_be_bytes(), "no error");
    std::fs::remove_dir_all(dir).ok();
}
