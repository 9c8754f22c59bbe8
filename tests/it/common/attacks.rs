//! What an attacker does on loopback, as tools: stalled bodies, idle and silent connections,
//! floods; and the real binaries to aim them at, with their peak memory.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use crate::common::*;

/// The agent binary answering on `port` and `admin`, plus `extra` flags; its log in `log`.
pub fn agent_binary(port: u16, admin: u16, extra: &[&str], log: &Path) -> Reaped {
    let (listen, admin) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{admin}"));
    let mut args = vec!["agent", "--listen", &listen, "--admin-listen", &admin];
    args.extend_from_slice(extra);
    spawn(&args, &[], log)
}

/// The webhook on `port` with the fixture associations and certificates in `certs`, plus
/// `extra` flags; its log in `log`.
pub fn serve(port: u16, certs: &Path, extra: &[&str], log: &Path) -> Reaped {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--cert-dir",
        certs.to_str().unwrap(),
        "--associations",
        "tests/fixtures/associations.yaml",
    ];
    args.extend_from_slice(extra);
    spawn(&args, &[], log)
}

/// Waits until the webhook started with [`serve`] has generated its certificates into `certs`
/// and answers `readyz`; returns its CA (PEM).
pub async fn ready(certs: &Path, readyz: &str) -> Vec<u8> {
    let wait = Instant::now() + Duration::from_secs(30);
    while !certs.join("ca.crt").exists() {
        assert!(Instant::now() < wait, "no certificate generated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    until_ready(&client(&[&ca], Http::H2), readyz, wait).await;
    ca
}

/// `VmHWM` (peak resident memory) of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Reads until the peer closes; the time it took, or `None` if it stayed open past `limit`.
pub async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(tokio::time::Instant::from_std(start + limit), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// A TLS connection with `alpn`, handshake done, nothing sent.
pub async fn idle_tls(
    addr: SocketAddr,
    ca: &[u8],
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut config = tls_client_config(&[ca]);
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// A request declaring `declared` body bytes that sends `sent` of them and then stalls; what
/// the server answered (a status, or 0 for a closed connection) and when.
pub async fn stalled_body(c: reqwest::Client, url: String, declared: usize, sent: usize) -> (u16, Duration) {
    let start = Instant::now();
    let chunks = (0..sent.div_ceil(65_536))
        .map(move |i| Ok::<_, std::io::Error>(vec![b' '; 65_536.min(sent - i * 65_536)]));
    let body = futures::stream::iter(chunks).chain(futures::stream::pending());
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .header("content-length", declared)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    (r.map_or(0, |r| r.status().as_u16()), start.elapsed())
}

/// Posts `body` to `url` until `stop`; counts answers that pass `good` and the others.
pub fn keep_asking(
    c: reqwest::Client,
    url: String,
    caller: Option<String>,
    body: Vec<u8>,
    stop: Arc<AtomicBool>,
    good: fn(u16, &[u8]) -> bool,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let mut req = c.post(&url).body(body.clone());
            if let Some(caller) = &caller {
                req = req.header("X-Auth-Token", caller);
            }
            let answered = match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    r.bytes().await.is_ok_and(|b| good(status, &b))
                }
                Err(_) => false,
            };
            if answered {
                ok += 1
            } else {
                failed += 1
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (ok, failed)
    })
}

pub fn admitted(status: u16, body: &[u8]) -> bool {
    status == 200 && String::from_utf8_lossy(body).contains("\"patchType\":\"JSONPatch\"")
}

/// Opens `n` connections to `addr` from 127.0.0.1 that send nothing (with `ca`, each completes
/// a TLS handshake offering `alpn`, none if empty); returns a task per connection the server
/// accepted, each ending with how long until the server closed it (`None`: open past `limit`).
/// Over TLS a refused connection is one whose handshake the server cut; plain TCP connections
/// are all returned (the server refuses them by closing at once).
pub async fn silent_connections(
    addr: SocketAddr,
    ca: Option<&[u8]>,
    alpn: &[u8],
    n: usize,
    limit: Duration,
) -> Vec<tokio::task::JoinHandle<Option<Duration>>> {
    let mut config = tls_client_config(&[ca.unwrap_or_default()]);
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut open = Vec::new();
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await.unwrap();
        if ca.is_none() {
            let mut tcp = tcp;
            open.push(tokio::spawn(async move { closed_within(&mut tcp, limit).await }));
            continue;
        }
        // Generous: a slow machine must not turn an accepted handshake into a "refusal".
        let handshake = tokio::time::timeout(
            Duration::from_secs(10),
            connector.connect("localhost".try_into().unwrap(), tcp),
        );
        if let Ok(Ok(mut tls)) = handshake.await {
            open.push(tokio::spawn(async move { closed_within(&mut tls, limit).await }));
        }
    }
    open
}

/// One listener under a flood of silent connections from one address, once per ALPN: the
/// first `share` connections are accepted, the address never holds more than its share, a
/// client from another address is served meanwhile, and every silent connection is closed at
/// the 2 s header deadline (+ slack), not at the idle one. Returns how many connections the
/// server refused in all, as the client saw it.
///
/// Nothing here depends on how fast the flood is opened: on a slow machine the first share is
/// closed at its header deadline while the flood is still being opened, and the server then
/// accepts more, which is right.
pub async fn flood(
    what: &str,
    addr: SocketAddr,
    ca: Option<&[u8]>,
    other: &reqwest::Client,
    url: &str,
    share: usize,
) -> usize {
    const FLOOD: usize = 1100;
    let limit = Duration::from_secs(6);
    let mut refused = 0;
    for alpn in [&b"h2"[..], b"http/1.1", b""] {
        if ca.is_none() && !alpn.is_empty() {
            continue;
        }
        let first = silent_connections(addr, ca, alpn, share, limit).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let accepted = first.iter().filter(|t| !t.is_finished()).count();
        assert!(
            accepted >= share / 2,
            "{what} ({alpn:?}): only {accepted} of the first {share} connections accepted"
        );
        let mut silent = first;
        silent.extend(silent_connections(addr, ca, alpn, FLOOD - share, limit).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held = silent.iter().filter(|t| !t.is_finished()).count();
        assert!(
            held <= share,
            "{what} ({alpn:?}): one address holds {held} connections, its share is {share}"
        );
        let r = other.get(url).send().await;
        assert!(
            r.is_ok(),
            "{what}: another client was not served during the flood: {r:?}"
        );
        let tls = ca.is_some();
        refused += FLOOD - silent.len();
        for t in silent {
            let took = t.await.unwrap();
            let took = took.unwrap_or_else(|| {
                panic!("{what} ({alpn:?}): a connection that sent nothing stayed open past 6 s")
            });
            // Plain TCP: the server refuses by closing at once, long before the 2 s deadline.
            if !tls && took < Duration::from_secs(1) {
                refused += 1;
            }
        }
        assert!(refused > 0, "{what} ({alpn:?}): the flood was never refused");
    }
    refused
}
