//! An in-process stand-in for the Kubernetes API server, kept only for what a real one cannot
//! be made to do on purpose (the real one runs the other tests: `common::apiserver`): list
//! requests held back, `410 Gone` for a resourceVersion compacted away on demand, a write that
//! conflicts with another writer's change just before it, TokenReviews that hang or answer
//! 429/503, and "down" (every connection dropped). Around those faults it serves what the
//! programs need, the way kube-apiserver does: list and chunked watch of
//! `podidentityassociations.iam.podidentity.io` in all namespaces, create, get, replace (409
//! on a stale resourceVersion) and delete (with a uid precondition) of one association in its
//! namespace, and TokenReview of the tests' unsigned tokens. The old cluster-scoped kind is not
//! installed here: its path answers 404, as for a CRD that is not.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

const GROUP: &str = "/apis/iam.podidentity.io/v1beta1";

/// How the stand-in answers TokenReviews.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum ReviewAnswer {
    /// As the API server does.
    #[default]
    Normal,
    /// Never: the request is held open.
    Hang,
    /// This error status, with a `Status` body, as an overloaded API server answers.
    Status(u16),
}

/// The associations, their history and their watchers.
#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Value>,
    /// Watch events by resourceVersion; those at or below `Inner::compacted` are gone.
    log: Vec<(u64, Value)>,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Default)]
struct Inner {
    associations: Store,
    rv: u64,
    compacted: u64,
    down: bool,
    lists: u64,
    reviews: u64,
    review_answer: ReviewAnswer,
    /// Reviews by the audience asked for.
    reviews_for: HashMap<String, u64>,
    /// Open connections, cut when the stand-in goes down.
    conns: Vec<tokio::task::AbortHandle>,
    /// Replaces still to be preceded by another writer's change (so they conflict).
    interfere: u32,
    created: u64,
}

#[derive(Clone)]
pub struct StandIn {
    pub addr: std::net::SocketAddr,
    inner: Arc<Mutex<Inner>>,
    hold: watch::Sender<bool>,
}

impl StandIn {
    /// Starts it; with `hold_lists`, list requests wait until [`release_lists`](Self::release_lists).
    pub async fn start(hold_lists: bool) -> Self {
        let (hold, _) = watch::channel(hold_lists);
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = StandIn { addr, inner, hold };
        let app = Router::new()
            .route(&format!("{GROUP}/podidentityassociations"), get(handle))
            .route(
                &format!("{GROUP}/namespaces/{{ns}}/podidentityassociations"),
                axum::routing::post(create),
            )
            .route(
                &format!("{GROUP}/namespaces/{{ns}}/podidentityassociations/{{name}}"),
                get(get_one).put(replace).delete(delete_one),
            )
            // As kube-apiserver answers a path no installed API serves.
            .fallback(async || (StatusCode::NOT_FOUND, "404 page not found\n"))
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                axum::routing::post(token_review),
            )
            .with_state(s.clone());
        let service = hyper_util::service::TowerToHyperService::new(app);
        let inner = s.inner.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // "Down" means unreachable: connections are dropped as soon as they arrive. The
                // check and the registration share the lock with `set_down`, so none slips by.
                let mut g = inner.lock().unwrap();
                if g.down {
                    drop(stream);
                    continue;
                }
                let service = service.clone();
                let conn = tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                g.conns.retain(|c| !c.is_finished());
                g.conns.push(conn.abort_handle());
            }
        });
        s
    }

    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).unwrap()
    }

    /// A client configuration for this API server.
    pub fn config(&self) -> kube::Config {
        kube::Config::new(format!("http://{}", self.addr).parse().unwrap())
    }

    pub fn release_lists(&self) {
        self.hold.send_replace(false);
    }

    pub fn reviews(&self) -> u64 {
        self.inner.lock().unwrap().reviews
    }

    /// The next `n` replaces each find the object changed by another writer just before (a
    /// tag `writer-<resourceVersion>: other` added), so they conflict.
    pub fn interfere(&self, n: u32) {
        self.inner.lock().unwrap().interfere = n;
    }

    /// The object `namespace/name`, as stored.
    pub fn object(&self, name: &str) -> Option<Value> {
        self.inner.lock().unwrap().associations.objects.get(name).cloned()
    }

    pub fn lists(&self) -> u64 {
        self.inner.lock().unwrap().lists
    }

    /// Creates or replaces an association, as `kubectl apply` would.
    pub fn apply(&self, mut obj: Value) {
        let mut g = self.inner.lock().unwrap();
        g.rv += 1;
        let rv = g.rv;
        let name = key(&obj);
        let kind = if g.associations.objects.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.entry("uid").or_insert(json!(format!("uid-{name}")));
        meta.entry("creationTimestamp")
            .or_insert(json!("2026-11-23T10:00:00Z"));
        g.associations.objects.insert(name, obj.clone());
        g.associations.emit(rv, json!({"type": kind, "object": obj}));
    }

    /// Deletes `namespace/name`.
    pub fn delete(&self, name: &str) {
        let mut g = self.inner.lock().unwrap();
        let Some(mut obj) = g.associations.objects.remove(name) else {
            return;
        };
        g.rv += 1;
        let rv = g.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        g.associations.emit(rv, json!({"type": "DELETED", "object": obj}));
    }

    /// Compacts history and ends every watch with `410 Gone`, forcing clients to relist.
    pub fn expire(&self) {
        let mut g = self.inner.lock().unwrap();
        g.compacted = g.rv;
        let gone = line(&gone_event());
        for w in g.associations.watchers.drain(..) {
            let _ = w.send(gone.clone());
        }
    }

    /// While down, open connections are cut and new ones dropped on arrival.
    pub fn set_review_answer(&self, answer: ReviewAnswer) {
        self.inner.lock().unwrap().review_answer = answer;
    }

    pub fn set_down(&self, down: bool) {
        let mut g = self.inner.lock().unwrap();
        g.down = down;
        if down {
            // Cut connections first: a watch must end in an error, as when a server dies, not
            // in a clean end of stream the client would answer by watching again at once.
            for c in g.conns.drain(..) {
                c.abort();
            }
            g.associations.watchers.clear();
        }
    }
}

impl Store {
    fn emit(&mut self, rv: u64, event: Value) {
        let bytes = line(&event);
        self.watchers.retain(|w| w.send(bytes.clone()).is_ok());
        self.log.push((rv, event));
    }
}

/// `namespace/name` of an object.
fn key(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap();
    b.push(b'\n');
    Bytes::from(b)
}

fn gone_event() -> Value {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410}})
}

async fn handle(State(s): State<StandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watching {
        let mut hold = s.hold.subscribe();
        let _ = hold.wait_for(|held| !held).await;
        let mut g = s.inner.lock().unwrap();
        g.lists += 1;
        let list = json!({
            "apiVersion": "iam.podidentity.io/v1beta1",
            "kind": "PodIdentityAssociationList",
            "metadata": {"resourceVersion": g.rv.to_string()},
            "items": g.associations.objects.values().cloned().collect::<Vec<_>>(),
        });
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            list.to_string(),
        )
            .into_response();
    }
    let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut g = s.inner.lock().unwrap();
        if from < g.compacted {
            let _ = tx.send(line(&gone_event()));
        } else {
            for (rv, event) in &g.associations.log {
                if *rv > from {
                    let _ = tx.send(line(event));
                }
            }
            g.associations.watchers.push(tx);
        }
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn object_answer(code: StatusCode, obj: &Value) -> Response {
    (code, [("content-type", "application/json")], obj.to_string()).into_response()
}

fn not_found(name: &str) -> Response {
    status(
        404,
        "NotFound",
        format!("podidentityassociations.iam.podidentity.io \"{name}\" not found"),
    )
}

async fn create(State(s): State<StandIn>, Path(ns): Path<String>, body: Bytes) -> Response {
    let mut obj: Value = serde_json::from_slice(&body).unwrap();
    obj["metadata"]["namespace"] = json!(ns);
    let name = key(&obj);
    let mut g = s.inner.lock().unwrap();
    if g.associations.objects.contains_key(&name) {
        return status(
            409,
            "AlreadyExists",
            format!(
                "podidentityassociations.iam.podidentity.io \"{}\" already exists",
                obj["metadata"]["name"]
            ),
        );
    }
    g.rv += 1;
    g.created += 1;
    let rv = g.rv;
    let meta = obj["metadata"].as_object_mut().unwrap();
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    meta.insert(
        "uid".into(),
        json!(format!("uid-{}-{}", name.replace('/', "."), g.created)),
    );
    meta.insert(
        "creationTimestamp".into(),
        json!(jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
    );
    g.associations.objects.insert(name, obj.clone());
    g.associations.emit(rv, json!({"type": "ADDED", "object": obj}));
    object_answer(StatusCode::CREATED, &obj)
}

async fn get_one(State(s): State<StandIn>, Path((ns, name)): Path<(String, String)>) -> Response {
    match s.object(&format!("{ns}/{name}")) {
        Some(obj) => object_answer(StatusCode::OK, &obj),
        None => not_found(&name),
    }
}

/// A replace, refused with 409 unless it names the stored resourceVersion; uid and creation
/// time are the server's.
async fn replace(
    State(s): State<StandIn>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut obj: Value = serde_json::from_slice(&body).unwrap();
    let name = format!("{ns}/{name}");
    let mut g = s.inner.lock().unwrap();
    let Some(current) = g.associations.objects.get(&name).cloned() else {
        return not_found(&name);
    };
    if g.interfere > 0 {
        g.interfere -= 1;
        g.rv += 1;
        let rv = g.rv;
        let mut changed = current.clone();
        changed["metadata"]["resourceVersion"] = json!(rv.to_string());
        let tags = changed["spec"]
            .as_object_mut()
            .unwrap()
            .entry("tags")
            .or_insert(json!([]));
        tags.as_array_mut()
            .unwrap()
            .push(json!({"key": format!("writer-{rv}"), "value": "other"}));
        g.associations.objects.insert(name.clone(), changed.clone());
        g.associations
            .emit(rv, json!({"type": "MODIFIED", "object": changed}));
    }
    let stored = &g.associations.objects[&name]["metadata"]["resourceVersion"];
    if obj["metadata"]["resourceVersion"] != *stored {
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on podidentityassociations.iam.podidentity.io \"{name}\": \
                 the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    g.rv += 1;
    let rv = g.rv;
    let meta = obj["metadata"].as_object_mut().unwrap();
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    meta.insert("uid".into(), current["metadata"]["uid"].clone());
    meta.insert(
        "creationTimestamp".into(),
        current["metadata"]["creationTimestamp"].clone(),
    );
    g.associations.objects.insert(name, obj.clone());
    g.associations
        .emit(rv, json!({"type": "MODIFIED", "object": obj}));
    object_answer(StatusCode::OK, &obj)
}

async fn delete_one(
    State(s): State<StandIn>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let options: Value = serde_json::from_slice(&body).unwrap_or_default();
    let name = format!("{ns}/{name}");
    let Some(current) = s.object(&name) else {
        return not_found(&name);
    };
    if let Some(uid) = options["preconditions"]["uid"].as_str()
        && current["metadata"]["uid"] != uid
    {
        return status(
            409,
            "Conflict",
            format!("Precondition failed: UID in precondition: {uid}"),
        );
    }
    s.delete(&name);
    let done = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": "iam.podidentity.io", "kind": "podidentityassociations"}});
    object_answer(StatusCode::OK, &done)
}

pub fn association(ns: &str, sa: &str, agency: &str) -> Value {
    json!({
        "apiVersion": "iam.podidentity.io/v1beta1",
        "kind": "PodIdentityAssociation",
        "metadata": {"name": sa, "namespace": ns},
        "spec": {"serviceAccount": sa, "agencyName": agency},
    })
}

/// The claims of a projected service-account token, read here independently of the code
/// under test.
struct Claims {
    exp: i64,
    audiences: Vec<String>,
    namespace: String,
    service_account: String,
    pod_name: Option<String>,
    pod_uid: Option<String>,
    /// `kubernetes.io.node.name`: the node of the pod the token is bound to.
    node_name: Option<String>,
    node_uid: Option<String>,
}

impl Claims {
    fn read(token: &str) -> Option<Self> {
        use base64::Engine;
        let parts: Vec<&str> = token.split('.').collect();
        let [_, payload, _] = parts[..] else { return None };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        let k = &v["kubernetes.io"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        // `sub` is system:serviceaccount:<namespace>:<name> for every service-account token.
        let sub = v["sub"]
            .as_str()
            .and_then(|s| s.strip_prefix("system:serviceaccount:"));
        let (sub_ns, sub_sa) = sub.and_then(|s| s.split_once(':')).unzip();
        Some(Claims {
            exp: v["exp"].as_i64()?,
            audiences: match &v["aud"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().filter_map(text).collect(),
                _ => vec![],
            },
            namespace: text(&k["namespace"]).or(sub_ns.map(str::to_owned))?,
            service_account: text(&k["serviceaccount"]["name"]).or(sub_sa.map(str::to_owned))?,
            pod_name: text(&k["pod"]["name"]),
            pod_uid: text(&k["pod"]["uid"]),
            node_name: text(&k["node"]["name"]),
            node_uid: text(&k["node"]["uid"]),
        })
    }
}

/// TokenReview as the API server answers it for projected service-account tokens (the
/// stand-in trusts the claims; a real API server verifies the signature too). A token bound to
/// a pod on a node gets the node in `user.extra`, as Kubernetes 1.30+ does.
async fn token_review(State(s): State<StandIn>, body: Bytes) -> Response {
    let review: Value = serde_json::from_slice(&body).unwrap_or_default();
    let token = review["spec"]["token"].as_str().unwrap_or("");
    let wanted: Vec<String> = serde_json::from_value(review["spec"]["audiences"].clone()).unwrap_or_default();
    let answer = {
        let mut g = s.inner.lock().unwrap();
        g.reviews += 1;
        *g.reviews_for.entry(wanted.join(",")).or_default() += 1;
        g.review_answer
    };
    match answer {
        ReviewAnswer::Normal => {}
        ReviewAnswer::Hang => std::future::pending::<()>().await,
        ReviewAnswer::Status(code) => {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "the server is currently unable to handle the request", "reason": "ServiceUnavailable", "code": code});
            return (
                StatusCode::from_u16(code).unwrap(),
                [("content-type", "application/json")],
                status.to_string(),
            )
                .into_response();
        }
    }
    let now = jiff::Timestamp::now().as_second();
    let status = match Claims::read(token) {
        Some(c) if c.exp <= now => {
            json!({"authenticated": false, "error": "[invalid bearer token, service account token has expired]"})
        }
        None => {
            json!({"authenticated": false, "error": "[invalid bearer token, square/go-jose: compact JWS format must have three parts]"})
        }
        Some(c) => {
            let audiences: Vec<&String> = c
                .audiences
                .iter()
                .filter(|a| wanted.is_empty() || wanted.contains(a))
                .collect();
            if audiences.is_empty() {
                json!({"authenticated": false, "error": "[invalid bearer token, token audiences [...] is invalid for the target audiences]"})
            } else {
                let mut extra = serde_json::Map::new();
                if let Some(pod) = &c.pod_name {
                    extra.insert("authentication.kubernetes.io/pod-name".into(), json!([pod]));
                    extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([c.pod_uid]));
                }
                if let Some(node) = &c.node_name {
                    extra.insert("authentication.kubernetes.io/node-name".into(), json!([node]));
                    extra.insert(
                        "authentication.kubernetes.io/node-uid".into(),
                        json!([c.node_uid]),
                    );
                }
                json!({
                    "authenticated": true,
                    "user": {
                        "username": format!("system:serviceaccount:{}:{}", c.namespace, c.service_account),
                        "uid": "sa-uid",
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", c.namespace)],
                        "extra": extra,
                    },
                    "audiences": audiences,
                })
            }
        }
    };
    let out = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
        "spec": review["spec"], "status": status});
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        out.to_string(),
    )
        .into_response()
}
