//! Malformed and hostile requests against the running TLS server: each gets a clear answer,
//! nothing panics, and the server keeps serving others.

use std::time::{Duration, Instant};

use crate::common::*;
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::webhook::metrics::Outcome;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn text(server: &TestServer, body: Vec<u8>) -> (u16, String) {
    let (status, _, bytes) = server.post(&server.h2(), body).await;
    (status, String::from_utf8(bytes).unwrap())
}

fn review(request: Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_bodies_get_400_with_the_reason() {
    let server = TestServer::start(Provider::Cce).await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty body", vec![], "empty request body"),
        ("not JSON", b"hello".to_vec(), "not an admission.k8s.io/v1 AdmissionReview"),
        ("JSON array", b"[1,2]".to_vec(), "not an admission.k8s.io/v1 AdmissionReview"),
        ("truncated", fixture("01-")[..200].to_vec(), "EOF while parsing"),
        (
            "wrong apiVersion",
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u"}})).unwrap(),
            "unsupported apiVersion \"admission.k8s.io/v1beta1\"",
        ),
        (
            "wrong kind",
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"})).unwrap(),
            "expected AdmissionReview",
        ),
        (
            "missing request",
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})).unwrap(),
            "has no request",
        ),
        ("missing uid", review(json!({"operation": "CREATE"})), "has no uid"),
        ("uid of wrong type", review(json!({"uid": 5})), "invalid type: integer `5`, expected a string"),
    ];
    for (what, body, needle) in cases {
        let (status, message) = text(&server, body).await;
        assert_eq!(status, 400, "{what}: {message}");
        assert!(message.contains(needle), "{what}: {message:?} lacks {needle:?}");
    }
    assert_eq!(server.state.metrics.admissions(Outcome::Invalid), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_we_cannot_act_on_are_answered_with_their_uid() {
    let server = TestServer::start(Provider::Cce).await;
    let c = server.h1();
    // A non-pod kind and a DELETE with a null object: allowed untouched.
    let r = server
        .review(&c, review(json!({"uid": "cm", "kind": {"group": "", "version": "v1", "kind": "ConfigMap"}, "operation": "CREATE", "object": {}})))
        .await;
    assert_eq!(
        (r["uid"].as_str(), r["allowed"].as_bool(), r.get("patch")),
        (Some("cm"), Some(true), None)
    );
    let r = server
        .review(&c, review(json!({"uid": "del", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "pi-demo", "operation": "DELETE", "object": null})))
        .await;
    assert_eq!(
        (r["uid"].as_str(), r["allowed"].as_bool(), r.get("patch")),
        (Some("del"), Some(true), None)
    );
    // A pod CREATE whose object is not a pod: denied with a 400 status that says why.
    let pod_kind = json!({"group": "", "version": "v1", "kind": "Pod"});
    for (uid, object, needle) in [
        (
            "bad-containers",
            json!({"spec": {"containers": "nope"}}),
            "cannot read the object as a Pod",
        ),
        (
            "bad-labels",
            json!({"metadata": {"labels": {"podidentity.io/inject": false}}}),
            "invalid type: boolean",
        ),
        ("no-object", Value::Null, "carries no object"),
    ] {
        let r = server
            .review(&c, review(json!({"uid": uid, "kind": pod_kind, "namespace": "pi-demo", "operation": "CREATE", "object": object})))
            .await;
        assert_eq!(r["uid"], uid);
        assert_eq!(r["allowed"], false, "{uid}");
        assert_eq!(r["status"]["code"], 400, "{uid}");
        let message = r["status"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{uid}: {message}");
    }
    // No namespace anywhere.
    let r = server
        .review(
            &c,
            review(json!({"uid": "nons", "kind": pod_kind, "operation": "CREATE", "object": {"spec": {}}})),
        )
        .await;
    assert!(r["status"]["message"].as_str().unwrap().contains("no namespace"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_refused_with_413() {
    let server = TestServer::start(Provider::Cce).await;
    for c in [server.h1(), server.h2()] {
        let (status, version, body) = server.post(&c, vec![b' '; 8 << 20]).await;
        assert_eq!(status, 413, "{version:?}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("exceeds the 3 MiB limit"), "{version:?}: {body}");
    }
    // Just under the limit is read (and then refused for what it is, not for its size).
    for c in [server.h1(), server.h2()] {
        let mut body = fixture("01-");
        body.resize((3 << 20) - 1, b' ');
        let (status, _, _) = server.post(&c, body).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_gets_a_readable_400() {
    let server = TestServer::start(Provider::Cce).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(
        out.ends_with("This port speaks HTTPS only: client sent a plain HTTP request\n"),
        "{out}"
    );
    server.review(&server.h1(), fixture("01-")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_garbage_is_dropped_and_others_are_served() {
    let server = TestServer::start(Provider::Cce).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    // A handshake record header followed by nonsense.
    s.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0x10, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ])
    .await
    .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("server closes");
    // rustls answers with a fatal alert record (type 21) and closes.
    assert!(read.is_err() || buf.is_empty() || buf[0] == 0x15, "{buf:?}");
    server.review(&server.h2(), fixture("01-")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let server = TestServer::start(Provider::Cce).await; // header read timeout: 2 s
    let mut tls = server.raw_tls().await;
    tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Le")
        .await
        .unwrap();
    let started = Instant::now();
    // Meanwhile others are served.
    server.review(&server.h1(), fixture("01-")).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf))
        .await
        .expect("connection closed by the server");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "closed too early: {waited:?}"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}
