//! Criterion benchmarks of the admission path (no I/O): run with `cargo bench`.
//!
//! Groups: `mutate/*` (the pure mutation on an already parsed pod), `review/*` (AdmissionReview
//! bytes in → response bytes out, what one `/mutate` call costs before HTTP and TLS),
//! `index/*` (lookups among 100 000 associations) and `reload/*` (parsing and indexing a
//! 100 000-entry association file). BENCHMARKS.md has the figures; `benches/metrics.rs` the
//! cost of recording an admission in metrics.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group};
use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::{Index, Reader, file};
use pod_identity_webhook::webhook::mutation::{self, DEFAULT_TOKEN_EXPIRATION, Injection, Pod, Settings};
use pod_identity_webhook::webhook::wire::Admission;
use serde_json::{Value, json};

const ASSOCIATIONS: usize = 100_000;

fn injection() -> Injection {
    let profile = Provider::Cce.profile();
    Injection::new(profile, Settings::new(profile, None, DEFAULT_TOKEN_EXPIRATION))
}

fn admission() -> Admission {
    let text = std::fs::read_to_string("tests/fixtures/associations.yaml").unwrap();
    let list = file::parse("associations.yaml".as_ref(), &text).unwrap();
    Admission {
        associations: Reader::fixed(Index::build(list).unwrap()),
        injection: injection(),
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/admission/{name}")).unwrap()
}

/// A pod far past what people write by hand: 20 containers with 10 env vars and 2 mounts each
/// (200 env vars), in the shape the API server sends (defaults, managedFields), SA pi-demo/app.
fn large_review() -> Vec<u8> {
    let containers: Vec<Value> = (0..20)
        .map(|c| {
            let env: Vec<Value> = (0..10)
                .map(|e| match e % 3 {
                    0 => json!({"name": format!("VAR_{c}_{e}"), "value": format!("value-{c}-{e}")}),
                    1 => json!({"name": format!("VAR_{c}_{e}"), "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}),
                    _ => json!({"name": format!("VAR_{c}_{e}"), "valueFrom": {"configMapKeyRef": {"name": "settings", "key": format!("k{e}")}}}),
                })
                .collect();
            json!({
                "name": format!("c{c}"),
                "image": format!("registry.example.com/team/app-{c}:1.2.3"),
                "imagePullPolicy": "IfNotPresent",
                "args": ["--port", format!("{}", 8000 + c), "--log-level=info"],
                "ports": [{"containerPort": 8000 + c, "name": "http", "protocol": "TCP"}],
                "env": env,
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8000 + c, "scheme": "HTTP"}, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3, "timeoutSeconds": 1},
                "volumeMounts": [
                    {"name": "data", "mountPath": format!("/data/{c}")},
                    {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
                ],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            })
        })
        .collect();
    let review = json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "5d1c2f0e-9a0b-4c1e-8f7d-2b6a4f1e9c3a",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "large",
            "namespace": "pi-demo",
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["kubeadm:cluster-admins", "system:authenticated"]},
            "object": {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {
                    "name": "large",
                    "namespace": "pi-demo",
                    "creationTimestamp": null,
                    "labels": {"app": "large", "tier": "backend"},
                    "annotations": {"example.com/owner": "team"},
                    "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
                },
                "spec": {
                    "volumes": [
                        {"name": "data", "emptyDir": {}},
                        {"name": "kube-api-access-x7k2p", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}},
                    ],
                    "containers": containers,
                    "restartPolicy": "Always",
                    "serviceAccountName": "app",
                    "serviceAccount": "app",
                    "dnsPolicy": "ClusterFirst",
                    "schedulerName": "default-scheduler",
                },
                "status": {},
            },
            "oldObject": null,
            "dryRun": true,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "dryRun": ["All"]},
        },
    });
    serde_json::to_vec(&review).unwrap()
}

/// The pod inside an AdmissionReview, as compact JSON bytes for `Pod::from_slice`.
fn pod_bytes(review: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(review).unwrap();
    serde_json::to_vec(&v["request"]["object"]).unwrap()
}

/// The bodies as the API server sends them: compact JSON (the fixture files are re-indented
/// for reading). Small: no volumes, env or mounts (2.6 KB); typical: one container with the
/// service-account volume (3.0 KB, the size of the reference figures' request); large: three
/// containers with env, probes, resources and managedFields (20 KB); and a generated pod.
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let cases = vec![
        (
            "small-06",
            compact(&fixture(
                "06-pod-no-automount-no-volumes-sa-app-apply-dryrun.json",
            )),
        ),
        (
            "typical-01",
            compact(&fixture("01-pod-single-container-sa-app-apply-dryrun.json")),
        ),
        (
            "large-17",
            compact(&fixture("17-pod-large-three-containers-sa-app-apply-dryrun.json")),
        ),
        ("generated-20c-200env", large_review()),
    ];
    for (name, body) in &cases {
        // Compacting kept every token.
        let original = match *name {
            "small-06" => fixture("06-pod-no-automount-no-volumes-sa-app-apply-dryrun.json"),
            "typical-01" => fixture("01-pod-single-container-sa-app-apply-dryrun.json"),
            "large-17" => fixture("17-pod-large-three-containers-sa-app-apply-dryrun.json"),
            _ => body.clone(),
        };
        assert_eq!(
            serde_json::from_slice::<Value>(body).unwrap(),
            serde_json::from_slice::<Value>(&original).unwrap(),
            "{name}"
        );
    }
    cases
}

fn mutate(c: &mut Criterion) {
    let a = admission();
    let index = a.associations.load();
    let association = index.get("pi-demo", "app").unwrap().clone();
    let mut g = c.benchmark_group("mutate");
    for (name, review) in cases() {
        let bytes = pod_bytes(&review);
        let pod = Pod::from_slice(&bytes).unwrap();
        let m = mutation::mutate(&pod, &association, &a.injection, 0).unwrap();
        assert!(!m.patch.is_empty(), "{name}: expected a patch");
        g.bench_function(name, |b| {
            b.iter(|| mutation::mutate(black_box(&pod), &association, &a.injection, black_box(0)))
        });
    }
    g.finish();
}

/// The fixture files are re-indented for reading; the API server sends compact JSON with the
/// same tokens. Drops whitespace outside strings.
fn compact(json: &[u8]) -> Vec<u8> {
    let (mut out, mut in_str, mut escaped) = (Vec::with_capacity(json.len()), false, false);
    for &b in json {
        if in_str {
            (in_str, escaped) = (escaped || b != b'"', !escaped && b == b'\\');
        } else if b == b'"' {
            in_str = true;
        } else if b.is_ascii_whitespace() {
            continue;
        }
        out.push(b);
    }
    out
}

fn review(c: &mut Criterion) {
    let a = admission();
    let mut g = c.benchmark_group("review");
    let cases = cases();
    for (name, body) in &cases {
        // The least any serde_json reader can spend on this body: validate it, keep nothing.
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("json-skip-only", name), body, |b, body| {
            b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).unwrap())
        });
    }
    for (name, body) in cases {
        let answer = a.review(&body);
        assert_eq!(answer.status, 200, "{name}");
        assert!(
            String::from_utf8_lossy(&answer.body).contains("\"patch\""),
            "{name}: expected a patch"
        );
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| a.review(black_box(body)))
        });
    }
    g.finish();
}

/// `n` associations spread over namespaces of 100 service accounts each, in the record shape
/// of the cloud API (uid, clusterId, two tags, timestamps), as an association file.
fn associations_json(n: usize) -> String {
    let list: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "namespace": format!("ns-{}", i / 100),
                "serviceAccount": format!("sa-{}", i % 100),
                "agencyName": format!("agency-{i}"),
                "tags": [{"key": "team", "value": format!("team-{}", i % 37)}, {"key": "env", "value": "prod"}],
                "uid": format!("{:08x}-0000-4000-8000-{:012x}", i, i),
                "clusterId": "46db1d50-b49f-48e5-a312-27645af73405",
                "createdAt": "2026-11-20T08:15:30Z",
                "modifiedAt": "2026-11-20T08:15:30Z",
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({ "associations": list })).unwrap()
}

/// The same records as block YAML (what a person or `kubectl`-style tooling writes).
fn associations_yaml(n: usize) -> String {
    let mut s = String::from("associations:\n");
    for i in 0..n {
        s.push_str(&format!(
            "- namespace: ns-{}\n  serviceAccount: sa-{}\n  agencyName: agency-{i}\n  tags:\n  - key: team\n    value: team-{}\n  - key: env\n    value: prod\n  uid: {:08x}-0000-4000-8000-{:012x}\n  clusterId: 46db1d50-b49f-48e5-a312-27645af73405\n  createdAt: \"2026-11-20T08:15:30Z\"\n  modifiedAt: \"2026-11-20T08:15:30Z\"\n",
            i / 100,
            i % 100,
            i % 37,
            i,
            i
        ));
    }
    s
}

fn build(text: &str) -> Index {
    let list = file::parse("bench".as_ref(), text).unwrap();
    Index::build(list).unwrap()
}

fn index(c: &mut Criterion) {
    let index = build(&associations_json(ASSOCIATIONS));
    assert_eq!(index.len(), ASSOCIATIONS);
    // Keys spread over the whole table (a stride coprime to n), so lookups are not all served
    // from the same cache lines.
    let keys: Vec<(String, String)> = (0..4096)
        .map(|k| (k * 7919) % ASSOCIATIONS)
        .map(|i| (format!("ns-{}", i / 100), format!("sa-{}", i % 100)))
        .collect();
    let misses: Vec<(String, String)> = keys
        .iter()
        .map(|(ns, sa)| (ns.clone(), format!("{sa}-x")))
        .collect();
    assert!(keys.iter().all(|(ns, sa)| index.get(ns, sa).is_some()));
    assert!(misses.iter().all(|(ns, sa)| index.get(ns, sa).is_none()));
    let mut g = c.benchmark_group("index-100k");
    for (name, keys) in [("hit", &keys), ("miss", &misses)] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                let (ns, sa) = &keys[i & 4095];
                i += 1;
                black_box(index.get(black_box(ns), black_box(sa)).is_some())
            })
        });
    }
    // What the admission path actually does: take a snapshot from the store, then look up.
    let store = Reader::fixed(index);
    let mut i = 0;
    g.bench_function("store-load+hit", |b| {
        b.iter(|| {
            let (ns, sa) = &keys[i & 4095];
            i += 1;
            black_box(store.load().get(black_box(ns), black_box(sa)).is_some())
        })
    });
    g.finish();
}

fn reload(c: &mut Criterion) {
    let mut g = c.benchmark_group("reload-100k");
    // Flat sampling: each iteration takes tens of milliseconds (seconds for YAML), so the
    // default linear ramp would run for minutes.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let json_text = associations_json(ASSOCIATIONS);
    g.throughput(Throughput::Bytes(json_text.len() as u64));
    g.bench_function("json-parse+build", |b| b.iter(|| build(black_box(&json_text))));
    // YAML is the slow path (serde_yaml builds events for every scalar); measured so the cost
    // of keeping a 100 000-entry file in YAML is known. Skip with BENCH_SKIP_YAML=1.
    if std::env::var_os("BENCH_SKIP_YAML").is_none() {
        let yaml_text = associations_yaml(ASSOCIATIONS);
        assert_eq!(build(&yaml_text).len(), ASSOCIATIONS);
        g.throughput(Throughput::Bytes(yaml_text.len() as u64));
        g.bench_function("yaml-parse+build", |b| b.iter(|| build(black_box(&yaml_text))));
    }
    g.finish();
}

/// `review` called `n` times on one case, for instruction counts that do not depend on the
/// machine's load: `BENCH_REVIEW_LOOP=1000 BENCH_CASE=typical-01 valgrind --tool=callgrind
/// --toggle-collect='*review_loop*' <bench binary>`; divide `Ir` by `n`.
#[inline(never)]
fn review_loop(a: &Admission, body: &[u8], n: usize) {
    for _ in 0..n {
        black_box(a.review(black_box(body)));
    }
}

criterion_group!(benches, mutate, review, index, reload);

fn main() {
    if let Some(n) = std::env::var("BENCH_REVIEW_LOOP")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        let case = std::env::var("BENCH_CASE").unwrap_or_else(|_| "typical-01".into());
        let Some((_, body)) = cases().into_iter().find(|(name, _)| *name == case) else {
            panic!("BENCH_CASE {case}: one of small-06, typical-01, large-17, generated-20c-200env")
        };
        review_loop(&admission(), &body, n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
