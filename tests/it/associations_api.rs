//! The seed 001 association API on the exchange: the five operations against the stand-in API
//! server (the objects are the only store), every refusal with its status and error code,
//! RBAC through SubjectAccessReview, optimistic concurrency, and the real `huaweicloudsdkcce`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::TokenReview;
use pod_identity_webhook::exchange::review::{Access, Holder, KubeReviewer, ReviewError, TokenReviewer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::agents::*;
use crate::common::python;
use crate::common::standin::{StandIn, association};
use crate::common::unsigned_on;

/// The API server's own audience: what `kubectl create token` gives by default.
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
const ADMIN: &str = "system:serviceaccount:platform:admin";
const READER: &str = "system:serviceaccount:platform:reader";

/// The user token of `platform/<name>` for the API server: one per user, as a person holds one
/// (the API caches what TokenReview said of a token).
fn token(name: &str) -> String {
    static TOKENS: std::sync::Mutex<BTreeMap<String, String>> = std::sync::Mutex::new(BTreeMap::new());
    let mut tokens = TOKENS.lock().unwrap();
    tokens
        .entry(name.to_owned())
        .or_insert_with(|| {
            unsigned_on(
                None,
                "platform",
                name,
                "shell",
                API_AUDIENCE,
                jiff::Timestamp::now().as_second() + 3600,
            )
        })
        .clone()
}

/// The stand-in's reviews, but `pass` of an agency: the stand-in's RBAC table covers the
/// associations only, so the admin may pass every agency and nobody else any (the pass check on
/// real RBAC is `real::pass_check`'s).
struct AdminPasses(KubeReviewer);

impl TokenReviewer for AdminPasses {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenReview, ReviewError>> {
        self.0.review(token, audience)
    }

    fn may<'a>(&'a self, holder: &'a Holder, access: &'a Access) -> BoxFuture<'a, Result<bool, ReviewError>> {
        if access.verb == "pass" {
            return Box::pin(async move { Ok(holder.username() == ADMIN) });
        }
        self.0.may(holder, access)
    }
}

struct Api {
    standin: StandIn,
    exchange: RunningExchange,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Self {
        let standin = StandIn::start(false).await;
        standin.grant(ADMIN, &["create", "list", "get", "update", "delete"]);
        standin.grant(READER, &["list", "get"]);
        let dir = tempfile::tempdir().unwrap();
        // IAM is never called by this API.
        let reviewer = Arc::new(AdminPasses(kube_reviewer(&standin)));
        let exchange = start_exchange_reviewed(&standin, "http://127.0.0.1:9", dir.path(), reviewer).await;
        Api {
            standin,
            exchange,
            _dir: dir,
        }
    }

    fn collection(&self) -> String {
        format!(
            "{}/api/v3/projects/{PROJECT}/clusters/{CLUSTER}/pod-identity-associations",
            self.exchange.url
        )
    }

    /// `method` on `path` (under the collection) as `user` (no token with `None`).
    async fn call(
        &self,
        user: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_url(user, method, &format!("{}{path}", self.collection()), body)
            .await
    }

    async fn call_url(
        &self,
        user: Option<&str>,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new().request(method, url);
        if let Some(u) = user {
            req = req.header("X-Auth-Token", token(u));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// An update of association `uid` by the admin.
    async fn put(&self, uid: &str, body: Value) -> (u16, Value) {
        self.call(Some("admin"), Method::PUT, &format!("/{uid}"), Some(body))
            .await
    }

    async fn create(&self, body: Value) -> (u16, Value) {
        self.call(Some("admin"), Method::POST, "", Some(body)).await
    }
}

fn request(ns: &str, sa: &str, agency: &str) -> Value {
    json!({"namespace": ns, "serviceAccount": sa, "agencyName": agency, "tags": [{"key": "team", "value": "payments"}]})
}

fn assert_refused(got: &(u16, Value), status: u16, code: &str, needle: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error_code"], code, "{}", got.1);
    let msg = got.1["error_msg"].as_str().unwrap();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

#[tokio::test]
async fn create_list_show_update_delete_through_the_objects() {
    let api = Api::start().await;
    let (status, created) = api.create(request("pi-demo", "app", "agency-a")).await;
    assert_eq!(status, 201, "{created}");
    let uid = created["uid"].as_str().unwrap().to_owned();
    assert_eq!(created["clusterId"], CLUSTER);
    assert_eq!(created["namespace"], "pi-demo");
    assert_eq!(created["serviceAccount"], "app");
    assert_eq!(created["agencyName"], "agency-a");
    assert_eq!(created["tags"], json!([{"key": "team", "value": "payments"}]));
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(created["modifiedAt"].as_str().is_some());
    // The object is what `kubectl get pia` shows, and its uid is the record's.
    let obj = api.standin.object("pi-demo.app").unwrap();
    assert_eq!(obj["metadata"]["uid"], uid.as_str());
    assert_eq!(obj["spec"]["agencyName"], "agency-a");

    let (status, list) = api.call(Some("admin"), Method::GET, "", None).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!([created.clone()]));

    let (status, shown) = api
        .call(Some("reader"), Method::GET, &format!("/{uid}"), None)
        .await;
    assert_eq!((status, &shown), (200, &created));

    let (status, updated) = api.put(&uid, json!({"agencyName": "agency-b"})).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["agencyName"], "agency-b");
    assert_eq!(
        (&updated["uid"], &updated["createdAt"]),
        (&created["uid"], &created["createdAt"])
    );
    assert_eq!(updated["tags"], created["tags"]);
    assert_eq!(
        api.standin.object("pi-demo.app").unwrap()["spec"]["agencyName"],
        "agency-b"
    );
    assert_eq!(
        api.standin.object("pi-demo.app").unwrap()["metadata"]["annotations"]["podidentity.io/modified-at"],
        updated["modifiedAt"]
    );

    let (status, body) = api
        .call(Some("admin"), Method::DELETE, &format!("/{uid}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(api.standin.object("pi-demo.app").is_none());
    let (status, list) = api.call(Some("admin"), Method::GET, "", None).await;
    assert_eq!((status, list), (200, json!([])));
    // Each token (the admin's, the reader's) was reviewed once, for the API server's own
    // audience (none named), and every call was authorised.
    assert_eq!(api.standin.reviews_for(""), 2);
    assert_eq!(api.standin.access_reviews(), 6);
}

#[tokio::test]
async fn every_refusal_has_its_status_and_code() {
    let api = Api::start().await;
    let (_, first) = api.create(request("pi-demo", "app", "agency-a")).await;
    let uid = first["uid"].as_str().unwrap().to_owned();

    let dup = api.create(request("pi-demo", "app", "agency-b")).await;
    assert_refused(&dup, 409, "CCE.01409001", &uid);
    let missing = api.create(json!({"namespace": "pi-demo"})).await;
    assert_refused(&missing, 400, "CCE.01400003", "serviceAccount");
    assert!(missing.1["error_msg"].as_str().unwrap().contains("agencyName"));
    let bad_tag = api
        .create(json!({"namespace": "a", "serviceAccount": "b", "agencyName": "x", "tags": [{"key": "_sys_x", "value": "v"}]}))
        .await;
    assert_refused(&bad_tag, 400, "CCE.01400003", "_sys_");
    let unknown = api
        .create(json!({"namespace": "a", "serviceAccount": "b", "agencyName": "x", "agency": "typo"}))
        .await;
    assert_refused(&unknown, 400, "CCE.01400004", "unknown field `agency`");
    let immutable = api
        .put(&uid, json!({"agencyName": "y", "namespace": "other"}))
        .await;
    assert_refused(&immutable, 400, "CCE.01400005", "namespace is immutable");
    let immutable = api.put(&uid, json!({"serviceAccount": "other"})).await;
    assert_refused(&immutable, 400, "CCE.01400005", "serviceAccount is immutable");
    let unknown = api.put(&uid, json!({"agencyName": "y", "tags": []})).await;
    assert_refused(&unknown, 400, "CCE.01400004", "unknown field `tags`");
    let no_agency = api.put(&uid, json!({})).await;
    assert_refused(&no_agency, 400, "CCE.01400003", "agencyName");
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let body = (method == Method::PUT).then(|| json!({"agencyName": "y"}));
        let gone = api.call(Some("admin"), method, "/no-such-uid", body).await;
        assert_refused(&gone, 404, "CCE.01404003", "no-such-uid");
    }
    let other = format!(
        "{}/api/v3/projects/{PROJECT}/clusters/other-cluster/pod-identity-associations",
        api.exchange.url
    );
    let not_served = api.call_url(Some("admin"), Method::GET, &other, None).await;
    assert_refused(&not_served, 404, "CCE.01404001", "other-cluster");
    let anonymous = api.call(None, Method::GET, "", None).await;
    assert_refused(&anonymous, 401, "CCE.01401010", "X-Auth-Token");
    // An AK/SK signature alone is no Kubernetes identity.
    let r = reqwest::Client::new()
        .get(api.collection())
        .header(
            "Authorization",
            "SDK-HMAC-SHA256 Access=AKEXAMPLE, SignedHeaders=host;x-sdk-date, Signature=00",
        )
        .header("X-Sdk-Date", "20261201T150000Z")
        .send()
        .await
        .unwrap();
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_refused(&got, 401, "CCE.01401010", "X-Auth-Token");
    let mut req = reqwest::Client::new().get(api.collection());
    req = req.header("X-Auth-Token", "not-a-jwt");
    let r = req.send().await.unwrap();
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_refused(&got, 401, "CCE.01401011", "not a valid");
    // Nothing above changed the association.
    let (_, list) = api.call(Some("admin"), Method::GET, "", None).await;
    assert_eq!(list, json!([first]));
}

#[tokio::test]
async fn rbac_decides_reads_and_writes() {
    let api = Api::start().await;
    let (_, created) = api.create(request("pi-demo", "app", "agency-a")).await;
    let id = format!("/{}", created["uid"].as_str().unwrap());
    let before = api.standin.access_reviews();
    for (user, method, path, body) in [
        ("nobody", Method::GET, "", None),
        ("nobody", Method::GET, id.as_str(), None),
        ("nobody", Method::POST, "", Some(request("pi-demo", "web", "a"))),
        ("reader", Method::POST, "", Some(request("pi-demo", "web", "a"))),
        (
            "reader",
            Method::PUT,
            id.as_str(),
            Some(json!({"agencyName": "b"})),
        ),
        ("reader", Method::DELETE, id.as_str(), None),
    ] {
        let got = api.call(Some(user), method.clone(), path, body).await;
        assert_refused(
            &got,
            403,
            "CCE.01403004",
            &format!("system:serviceaccount:platform:{user} may not"),
        );
    }
    assert_eq!(api.standin.access_reviews() - before, 6);
    let (status, _) = api.call(Some("reader"), Method::GET, "", None).await;
    assert_eq!(status, 200);
    assert!(api.standin.object("pi-demo.web").is_none());
    assert_eq!(
        api.standin.object("pi-demo.app").unwrap()["spec"]["agencyName"],
        "agency-a"
    );
}

#[tokio::test]
async fn an_update_conflicting_once_is_retried_twice_is_409() {
    let api = Api::start().await;
    let (_, created) = api.create(request("pi-demo", "app", "agency-a")).await;
    let id = format!("/{}", created["uid"].as_str().unwrap());
    api.standin.interfere(1);
    let (status, body) = api
        .call(
            Some("admin"),
            Method::PUT,
            &id,
            Some(json!({"agencyName": "agency-b"})),
        )
        .await;
    assert_eq!((status, &body["agencyName"]), (200, &json!("agency-b")), "{body}");
    // The other writer's change, made between the read and the write, is kept.
    let other = json!({"key": "writer-2", "value": "other"});
    assert_eq!(body["tags"][1], other, "{body}");
    assert_eq!(
        api.standin.object("pi-demo.app").unwrap()["spec"]["tags"][1],
        other
    );
    api.standin.interfere(2);
    let got = api
        .call(
            Some("admin"),
            Method::PUT,
            &id,
            Some(json!({"agencyName": "agency-c"})),
        )
        .await;
    assert_refused(&got, 409, "CCE.01409002", "changed concurrently");
    assert_eq!(
        api.standin.object("pi-demo.app").unwrap()["spec"]["agencyName"],
        "agency-b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_updates_lose_no_write() {
    let api = Api::start().await;
    let (_, created) = api.create(request("pi-demo", "app", "agency-0")).await;
    let id = format!("/{}", created["uid"].as_str().unwrap());
    let answers = futures::future::join_all((1..=6).map(|i| {
        api.call(
            Some("admin"),
            Method::PUT,
            &id,
            Some(json!({"agencyName": format!("agency-{i}")})),
        )
    }))
    .await;
    let mut won = Vec::new();
    for (status, body) in &answers {
        match status {
            200 => won.push(body["agencyName"].as_str().unwrap().to_owned()),
            409 => assert_eq!(body["error_code"], "CCE.01409002"),
            other => panic!("{other}: {body}"),
        }
    }
    assert!(!won.is_empty());
    // Every accepted write was the last at its time: the stored agency is one that won, and
    // the object's resourceVersion moved once per accepted write (create = 1).
    let obj = api.standin.object("pi-demo.app").unwrap();
    assert!(
        won.iter().any(|w| obj["spec"]["agencyName"] == w.as_str()),
        "{won:?} {obj}"
    );
    let rv: usize = obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rv, 1 + won.len());
}

#[tokio::test]
async fn the_crd_and_the_api_are_one_store() {
    let api = Api::start().await;
    // Applied as `kubectl apply` would: the REST list shows it.
    api.standin.apply(association("billing", "worker", "agency-k"));
    let (status, list) = api.call(Some("admin"), Method::GET, "", None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["namespace"], "billing");
    assert_eq!(list[0]["agencyName"], "agency-k");
    assert_eq!(list[0]["uid"], "uid-billing.worker");
    assert_eq!(list[0]["clusterId"], CLUSTER);
    // A duplicate through the API names the object's uid.
    let dup = api.create(request("billing", "worker", "x")).await;
    assert_refused(&dup, 409, "CCE.01409001", "uid-billing.worker");
    // Changed through the CRD: the API shows the change; created through the API: an object.
    let mut changed = association("billing", "worker", "agency-k2");
    changed["metadata"]["uid"] = json!("uid-billing.worker");
    api.standin.apply(changed);
    let (_, shown) = api
        .call(Some("admin"), Method::GET, "/uid-billing.worker", None)
        .await;
    assert_eq!(shown["agencyName"], "agency-k2");
    let (_, created) = api.create(request("billing", "api", "agency-r")).await;
    let obj = api.standin.object("billing.api").unwrap();
    assert_eq!(obj["spec"]["serviceAccount"], "api");
    assert_eq!(obj["metadata"]["uid"], created["uid"]);
    // Deleted through the CRD: gone from the API.
    api.standin.delete("billing.worker");
    let (_, list) = api.call(Some("admin"), Method::GET, "", None).await;
    assert_eq!(list, json!([created]));
}

const SDK_SCRIPT: &str = r#"
import json, os
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions import exceptions
from huaweicloudsdkcore.http.http_handler import HttpHandler
from huaweicloudsdkcce.v3 import *
i = json.loads(os.environ["SDK_INPUT"])
def token(request, logger):
    request.header_params["X-Auth-Token"] = i["token"]
client = (CceClient.new_builder()
    .with_credentials(BasicCredentials("AKEXAMPLE", "SKEXAMPLE", i["project"]))
    .with_endpoints([i["endpoint"]])
    .with_http_handler(HttpHandler().add_request_handler(token))
    .build())
out = {}
c = i["cluster"]
body = PodIdentityAssociation(namespace="pi-demo", service_account="app", agency_name="agency-a",
                              tags=[ResourceTag(key="team", value="payments")])
created = client.create_pod_identity_association(CreatePodIdentityAssociationRequest(cluster_id=c, body=body))
out["created"] = [type(created).__name__, created.uid, created.agency_name, created.tags[0].key, created.created_at]
listed = client.list_pod_identity_associations(ListPodIdentityAssociationsRequest(cluster_id=c))
out["listed"] = [type(listed).__name__, [type(a).__name__ for a in listed.body], [a.uid for a in listed.body]]
shown = client.show_pod_identity_association(ShowPodIdentityAssociationRequest(cluster_id=c, association_id=created.uid))
out["shown"] = [type(shown).__name__, shown.uid, shown.service_account, shown.cluster_id]
updated = client.update_pod_identity_association(UpdatePodIdentityAssociationRequest(
    cluster_id=c, association_id=created.uid, body=PodIdentityAssociationUpdate(agency_name="agency-b")))
out["updated"] = [type(updated).__name__, updated.agency_name, updated.uid]
def refused(call):
    try:
        call()
    except exceptions.ClientRequestException as e:
        return [type(e).__name__, e.status_code, e.error_code, e.error_msg]
    return None
out["duplicate"] = refused(lambda: client.create_pod_identity_association(
    CreatePodIdentityAssociationRequest(cluster_id=c, body=body)))
bad = PodIdentityAssociation(namespace="pi-demo", service_account="web", agency_name="a",
                             tags=[ResourceTag(key="_sys_x", value="v")])
out["bad_tag"] = refused(lambda: client.create_pod_identity_association(
    CreatePodIdentityAssociationRequest(cluster_id=c, body=bad)))
deleted = client.delete_pod_identity_association(
    DeletePodIdentityAssociationRequest(cluster_id=c, association_id=created.uid))
out["deleted"] = [type(deleted).__name__, deleted.status_code]
out["after"] = [a.uid for a in client.list_pod_identity_associations(
    ListPodIdentityAssociationsRequest(cluster_id=c)).body or []]
print(json.dumps(out))
"#;

/// The cloud's own SDK, signing every request with AK/SK as it always does and carrying the
/// user's token through its request hook, drives every operation and gets typed answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cce_sdk_drives_the_whole_family() {
    let api = Api::start().await;
    let input = json!({"endpoint": api.exchange.url, "project": PROJECT, "cluster": CLUSTER, "token": token("admin")})
        .to_string();
    let out = tokio::task::spawn_blocking(move || python::run(SDK_SCRIPT, &[("SDK_INPUT", &input)]))
        .await
        .unwrap();
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    let uid = out["created"][1].as_str().unwrap();
    assert_eq!(
        out["created"],
        json!([
            "CreatePodIdentityAssociationResponse",
            uid,
            "agency-a",
            "team",
            out["created"][4]
        ])
    );
    assert!(out["created"][4].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        out["listed"],
        json!([
            "ListPodIdentityAssociationsResponse",
            ["PodIdentityAssociationResp"],
            [uid]
        ])
    );
    assert_eq!(
        out["shown"],
        json!(["ShowPodIdentityAssociationResponse", uid, "app", CLUSTER])
    );
    assert_eq!(
        out["updated"],
        json!(["UpdatePodIdentityAssociationResponse", "agency-b", uid])
    );
    let dup = &out["duplicate"];
    assert_eq!(dup[0], "ClientRequestException", "{dup}");
    assert_eq!((&dup[1], &dup[2]), (&json!(409), &json!("CCE.01409001")), "{dup}");
    assert!(dup[3].as_str().unwrap().contains(uid), "{dup}");
    let bad = &out["bad_tag"];
    assert_eq!((&bad[1], &bad[2]), (&json!(400), &json!("CCE.01400003")), "{bad}");
    assert!(bad[3].as_str().unwrap().contains("_sys_"), "{bad}");
    assert_eq!(
        out["deleted"],
        json!(["DeletePodIdentityAssociationResponse", 204])
    );
    assert_eq!(out["after"], json!([]));
    assert!(api.standin.object("pi-demo.app").is_none());
}
