//! The seed 001 association API on the exchange against a real API server: the five operations
//! stored only as real `PodIdentityAssociation` objects (what `kubectl get pia` shows), callers
//! authenticated by the real TokenReview (service accounts' TokenRequest tokens) and authorised
//! by real RBAC through SubjectAccessReview, every refusal with its status and error code, and
//! the real `huaweicloudsdkcce`. The exchange runs as a service account with the manifests'
//! exchange ClusterRole. Each test has a namespace of its own; the associations it makes are
//! named after it, and lists are read for that namespace only (the cluster is shared).

use kube::api::{Api as KubeObjects, ApiResource, DynamicObject, WatchEvent, WatchParams};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::agents::*;
use crate::common::apiserver::{
    Acting, ApiServer, association_yaml, legacy_association_yaml, manifest_rules,
};
use crate::common::python;
use pod_identity_webhook::testing::PodIdentityAssociation;

const VERBS: [&str; 5] = ["create", "list", "get", "update", "delete"];

/// RBAC rules granting `verbs` on the associations; a writer may also pass any agency (the
/// pass check itself is `deploy::real::pass_check`'s).
fn on_associations(verbs: &[&str]) -> Value {
    if verbs.is_empty() {
        return json!([]);
    }
    let mut rules = vec![
        json!({"apiGroups": ["iam.podidentity.io", "podidentity.io"], "resources": ["podidentityassociations"], "verbs": verbs}),
    ];
    if verbs.iter().any(|v| *v == "create" || *v == "update") {
        rules.push(json!({"apiGroups": ["podidentity.io"], "resources": ["agencies"], "verbs": ["pass"]}));
    }
    json!(rules)
}

struct Api {
    api: &'static ApiServer,
    /// The test's namespace: of the callers' service accounts and of its associations.
    ns: String,
    /// Callers' tokens, by service account.
    tokens: std::collections::HashMap<String, String>,
    exchange: RunningExchange,
    _dir: tempfile::TempDir,
}

impl Api {
    /// The exchange on the shared API server with callers `admin` (every verb), `reader`
    /// (list, get) and `nobody` (no rule), or `None` without one.
    async fn start(prefix: &str) -> Option<Self> {
        let api = ApiServer::shared()?;
        api.install_crd();
        let ns = api.namespace(prefix, &[]).await;
        let rules = manifest_rules("manifests/agent/exchange.yaml", "pod-identity-exchange");
        let token = api
            .service_account_with(&ns, "pod-identity-exchange", rules)
            .await;
        let dir = tempfile::tempdir().unwrap();
        // IAM is never called by this API.
        let exchange = ExchangeUnderTest::new(&Acting { api, token })
            .iam("http://127.0.0.1:9", dir.path())
            .start()
            .await;
        let mut me = Api {
            api,
            ns,
            tokens: Default::default(),
            exchange,
            _dir: dir,
        };
        me.caller("admin", &VERBS).await;
        me.caller("reader", &["list", "get"]).await;
        me.caller("nobody", &[]).await;
        Some(me)
    }

    /// A caller: service account `name` of the test's namespace, granted `verbs` on the
    /// associations by a ClusterRole of its own.
    async fn caller(&mut self, name: &str, verbs: &[&str]) {
        let token = self
            .api
            .service_account_with(&self.ns, name, on_associations(verbs))
            .await;
        self.tokens.insert(name.to_owned(), token);
    }

    fn user(&self, name: &str) -> String {
        format!("system:serviceaccount:{}:{name}", self.ns)
    }

    fn collection(&self) -> String {
        format!(
            "{}/api/v3/projects/{PROJECT}/clusters/{CLUSTER}/pod-identity-associations",
            self.exchange.url
        )
    }

    /// `method` on `path` (under the collection) as caller `user` (no token with `None`).
    async fn call(
        &self,
        user: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let token = user.map(|u| self.tokens[u].as_str());
        self.call_with(token, method, &format!("{}{path}", self.collection()), body)
            .await
    }

    async fn call_with(
        &self,
        token: Option<&str>,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new().request(method, url);
        if let Some(t) = token {
            req = req.header("X-Auth-Token", t);
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

    /// The list as `user` sees it, of the test's namespace only.
    async fn list_as(&self, user: &str) -> (u16, Value) {
        let (status, list) = self.call(Some(user), Method::GET, "", None).await;
        let Some(all) = list.as_array() else {
            return (status, list);
        };
        let mine: Vec<Value> = all
            .iter()
            .filter(|a| a["namespace"] == self.ns.as_str())
            .cloned()
            .collect();
        (status, Value::Array(mine))
    }

    /// The association for service account `sa` of the test's namespace.
    fn request(&self, sa: &str, agency: &str) -> Value {
        json!({"namespace": self.ns, "serviceAccount": sa, "agencyName": agency, "tags": [{"key": "team", "value": "payments"}]})
    }

    /// Object `<ns>/<sa>` as `kubectl get pia -o yaml` shows it, if there is one.
    fn kubectl_get(&self, sa: &str) -> Option<Value> {
        let (ok, out, err) = self.api.kubectl(
            &[
                "get",
                "pia",
                "-n",
                &self.ns,
                sa,
                "-o",
                "yaml",
                "--ignore-not-found",
            ],
            None,
        );
        assert!(ok, "kubectl get pia {sa}: {err}");
        (!out.trim().is_empty()).then(|| serde_yaml::from_str(&out).unwrap())
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) {
        let (ok, out, err) = self.api.kubectl(args, stdin);
        assert!(ok, "kubectl {args:?}: {out}{err}");
    }
}

fn assert_refused(got: &(u16, Value), status: u16, code: &str, needle: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error_code"], code, "{}", got.1);
    let msg = got.1["error_msg"].as_str().unwrap();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

/// The record an object makes, as `kubectl` shows the object: uid, spec, timestamps.
fn assert_record_is_object(record: &Value, obj: &Value) {
    let meta = &obj["metadata"];
    assert_eq!(record["uid"], meta["uid"], "{record} vs {obj}");
    assert_eq!(record["namespace"], obj["metadata"]["namespace"]);
    assert_eq!(record["serviceAccount"], obj["spec"]["serviceAccount"]);
    assert_eq!(record["agencyName"], obj["spec"]["agencyName"]);
    assert_eq!(record["tags"], obj["spec"]["tags"]);
    assert_eq!(record["createdAt"], meta["creationTimestamp"]);
    assert_eq!(
        record["modifiedAt"],
        meta["annotations"]["podidentity.io/modified-at"]
    );
}

#[tokio::test]
async fn create_list_show_update_delete_through_the_objects() {
    let Some(api) = Api::start("pia-crud").await else {
        return;
    };
    let (status, created) = api.create(api.request("app", "agency-a")).await;
    assert_eq!(status, 201, "{created}");
    let uid = created["uid"].as_str().unwrap().to_owned();
    assert_eq!(created["clusterId"], CLUSTER);
    assert_eq!(created["namespace"], api.ns.as_str());
    assert_eq!(created["serviceAccount"], "app");
    assert_eq!(created["agencyName"], "agency-a");
    assert_eq!(created["tags"], json!([{"key": "team", "value": "payments"}]));
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));
    // What the API wrote is what `kubectl get pia` shows, and its uid is the record's.
    let obj = api.kubectl_get("app").expect("the object");
    assert_eq!(obj["metadata"]["name"], "app");
    assert_eq!(obj["apiVersion"], "iam.podidentity.io/v1beta1");
    assert_record_is_object(&created, &obj);

    let (status, list) = api.list_as("admin").await;
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
    let obj = api.kubectl_get("app").expect("the object");
    assert_eq!(obj["spec"]["agencyName"], "agency-b");
    assert_record_is_object(&updated, &obj);

    let (status, body) = api
        .call(Some("admin"), Method::DELETE, &format!("/{uid}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(api.kubectl_get("app").is_none());
    let (status, list) = api.list_as("admin").await;
    assert_eq!((status, list), (200, json!([])));
}

#[tokio::test]
async fn every_refusal_has_its_status_and_code() {
    let Some(api) = Api::start("pia-refusals").await else {
        return;
    };
    let (_, first) = api.create(api.request("app", "agency-a")).await;
    let uid = first["uid"].as_str().unwrap().to_owned();
    let ns = api.ns.as_str();

    let dup = api.create(api.request("app", "agency-b")).await;
    assert_refused(&dup, 409, "CCE.01409001", &uid);
    let missing = api.create(json!({"namespace": ns})).await;
    assert_refused(&missing, 400, "CCE.01400003", "serviceAccount");
    assert!(missing.1["error_msg"].as_str().unwrap().contains("agencyName"));
    let bad_tag = api
        .create(json!({"namespace": ns, "serviceAccount": "b", "agencyName": "x", "tags": [{"key": "_sys_x", "value": "v"}]}))
        .await;
    assert_refused(&bad_tag, 400, "CCE.01400003", "_sys_");
    let unknown = api
        .create(json!({"namespace": ns, "serviceAccount": "b", "agencyName": "x", "agency": "typo"}))
        .await;
    assert_refused(&unknown, 400, "CCE.01400004", "unknown field `agency`");
    // A service account name longer than any object's name may be (the association is named
    // after it): the API server's refusal, in the cloud's error body.
    let long = vec!["a".repeat(50); 5].join(".");
    let too_long = api
        .create(json!({"namespace": ns, "serviceAccount": long, "agencyName": "x"}))
        .await;
    assert_refused(&too_long, 400, "CCE.01400003", "253");
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
    let admin = Some(api.tokens["admin"].as_str());
    let not_served = api.call_with(admin, Method::GET, &other, None).await;
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
    let url = api.collection();
    let not_a_token = api.call_with(Some("not-a-jwt"), Method::GET, &url, None).await;
    assert_refused(&not_a_token, 401, "CCE.01401011", "not a valid");
    // The admin's own token, issued for another audience (a pod's, say), is not the admin here.
    let other_audience = api.api.token(ns, "admin", None, "service.cce.pods", 3600).await;
    let got = api
        .call_with(Some(&other_audience), Method::GET, &url, None)
        .await;
    assert_refused(&got, 401, "CCE.01401011", "not a valid");
    // Nothing above changed the association or made another.
    let (_, list) = api.list_as("admin").await;
    assert_eq!(list, json!([first]));
    assert_eq!(api.kubectl_get("app").unwrap()["spec"]["agencyName"], "agency-a");
    assert!(api.kubectl_get("b").is_none());
}

/// Each operation as callers granted one verb each: the real authorizer lets through exactly
/// the one with the operation's verb.
#[tokio::test]
async fn rbac_decides_each_verb() {
    let Some(mut api) = Api::start("pia-rbac").await else {
        return;
    };
    for verb in VERBS {
        api.caller(&format!("only-{verb}"), &[verb]).await;
    }
    let mut uid = String::new();
    for verb in VERBS {
        let (method, path, body) = match verb {
            "create" => (Method::POST, String::new(), Some(api.request("app", "agency-a"))),
            "list" => (Method::GET, String::new(), None),
            "get" => (Method::GET, format!("/{uid}"), None),
            "update" => (
                Method::PUT,
                format!("/{uid}"),
                Some(json!({"agencyName": "agency-b"})),
            ),
            _ => (Method::DELETE, format!("/{uid}"), None),
        };
        // Everyone without the verb first: nothing changes ...
        for other in VERBS.iter().filter(|v| **v != verb) {
            let caller = format!("only-{other}");
            let got = api.call(Some(&caller), method.clone(), &path, body.clone()).await;
            assert_refused(
                &got,
                403,
                "CCE.01403004",
                &format!(
                    "{} may not {verb} podidentityassociations.iam.podidentity.io",
                    api.user(&caller)
                ),
            );
        }
        let obj = api.kubectl_get("app");
        match verb {
            "create" => assert!(obj.is_none(), "{obj:?}"),
            "update" => assert_eq!(obj.unwrap()["spec"]["agencyName"], "agency-a"),
            _ => assert!(obj.is_some()),
        }
        // ... and the one with it succeeds.
        let caller = format!("only-{verb}");
        let (status, answer) = api.call(Some(&caller), method, &path, body).await;
        let obj = api.kubectl_get("app");
        match verb {
            "create" => {
                assert_eq!(status, 201, "{answer}");
                uid = answer["uid"].as_str().unwrap().to_owned();
                assert_record_is_object(&answer, obj.as_ref().unwrap());
            }
            "list" => {
                assert_eq!(status, 200, "{answer}");
                assert!(
                    answer
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|a| a["uid"] == uid.as_str()),
                    "{answer}"
                );
            }
            "get" => {
                assert_eq!(status, 200, "{answer}");
                assert_record_is_object(&answer, obj.as_ref().unwrap());
            }
            "update" => {
                assert_eq!(status, 200, "{answer}");
                assert_eq!(obj.as_ref().unwrap()["spec"]["agencyName"], "agency-b");
                assert_record_is_object(&answer, obj.as_ref().unwrap());
            }
            _ => {
                assert_eq!(status, 204, "{answer}");
                assert!(obj.is_none(), "{obj:?}");
            }
        }
    }
    // A caller with no rule at all may do nothing, reads included.
    for (method, path) in [(Method::GET, String::new()), (Method::GET, format!("/{uid}"))] {
        let verb = if path.is_empty() { "list" } else { "get" };
        let got = api.call(Some("nobody"), method, &path, None).await;
        assert_refused(
            &got,
            403,
            "CCE.01403004",
            &format!("{} may not {verb}", api.user("nobody")),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_updates_lose_no_write() {
    let Some(api) = Api::start("pia-race").await else {
        return;
    };
    let (_, created) = api.create(api.request("app", "agency-0")).await;
    let id = format!("/{}", created["uid"].as_str().unwrap());
    // Every write the API server accepts, as a watch of the object sees it.
    let name = "app";
    let objects: KubeObjects<DynamicObject> = KubeObjects::namespaced_with(
        api.api.client(),
        &api.ns,
        &ApiResource::erase::<PodIdentityAssociation>(&()),
    );
    let rv = objects
        .get(name)
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let params = WatchParams::default().fields(&format!("metadata.name={name}"));
    let mut events = Box::pin(objects.watch(&params, &rv).await.unwrap());
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
    // Every accepted write is one write of the object, with its own agency, and the last is
    // what is stored: no answer of 200 was overwritten unseen.
    use futures::StreamExt;
    let mut written = Vec::new();
    while written.len() < won.len() {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), events.next()).await;
        match next {
            Ok(Some(Ok(WatchEvent::Modified(o)))) => {
                written.push(o.data["spec"]["agencyName"].as_str().unwrap().to_owned())
            }
            Ok(Some(Ok(WatchEvent::Bookmark(_)))) => {}
            other => panic!("after {written:?} of {won:?}: {other:?}"),
        }
    }
    let (mut sorted_won, mut sorted_written) = (won.clone(), written.clone());
    sorted_won.sort();
    sorted_written.sort();
    assert_eq!(sorted_written, sorted_won);
    let stored = api.kubectl_get("app").unwrap();
    assert_eq!(stored["spec"]["agencyName"], written.last().unwrap().as_str());
    let more = tokio::time::timeout(std::time::Duration::from_millis(500), events.next()).await;
    assert!(more.is_err(), "a write no answer reported: {more:?}");
}

#[tokio::test]
async fn the_crd_and_the_api_are_one_store() {
    let Some(api) = Api::start("pia-store").await else {
        return;
    };
    let ns = api.ns.as_str();
    // Applied with `kubectl apply`: the REST list shows it, with the object's uid.
    api.api.apply(&association_yaml(ns, "worker", "agency-k"));
    let obj = api.kubectl_get("worker").unwrap();
    let uid = obj["metadata"]["uid"].as_str().unwrap().to_owned();
    let (status, list) = api.list_as("admin").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["namespace"], ns);
    assert_eq!(list[0]["agencyName"], "agency-k");
    assert_eq!(list[0]["uid"], uid.as_str());
    assert_eq!(list[0]["clusterId"], CLUSTER);
    assert_eq!(list[0]["createdAt"], obj["metadata"]["creationTimestamp"]);
    // A duplicate through the API names the object's uid.
    let dup = api.create(api.request("worker", "x")).await;
    assert_refused(&dup, 409, "CCE.01409001", &uid);
    // Changed through the CRD: the API shows the change; created through the API: an object.
    api.api.apply(&association_yaml(ns, "worker", "agency-k2"));
    let (_, shown) = api
        .call(Some("admin"), Method::GET, &format!("/{uid}"), None)
        .await;
    assert_eq!(shown["agencyName"], "agency-k2");
    assert_eq!(shown["uid"], uid.as_str());
    let (_, created) = api.create(api.request("api", "agency-r")).await;
    let obj = api.kubectl_get("api").unwrap();
    assert_eq!(obj["spec"]["serviceAccount"], "api");
    assert_record_is_object(&created, &obj);
    // Deleted through the CRD: gone from the API.
    api.kubectl(&["delete", "pia", "-n", ns, "worker"], None);
    let (_, list) = api.list_as("admin").await;
    assert_eq!(list, json!([created]));
    let gone = api
        .call(Some("admin"), Method::GET, &format!("/{uid}"), None)
        .await;
    assert_refused(&gone, 404, "CCE.01404003", &uid);
}

/// An old cluster-scoped association is still the API's, for the release that reads it:
/// listed, shown, updated and deleted in place; and its service account has one already.
#[tokio::test]
async fn old_cluster_scoped_associations_are_served_until_migrated() {
    let Some(api) = Api::start("pia-old").await else {
        return;
    };
    let ns = api.ns.clone();
    api.api.apply(&legacy_association_yaml(&ns, "old", "agency-old"));
    let name = format!("{ns}.old");
    let (ok, uid, err) = api.api.kubectl(
        &[
            "get",
            "podidentityassociations.podidentity.io",
            &name,
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    );
    assert!(ok && !uid.is_empty(), "{err}");
    let (status, list) = api.list_as("admin").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        (list[0]["uid"].as_str(), list[0]["serviceAccount"].as_str()),
        (Some(uid.as_str()), Some("old"))
    );
    assert_eq!(list[0]["namespace"], ns.as_str());
    let dup = api.create(api.request("old", "agency-new")).await;
    assert_refused(&dup, 409, "CCE.01409001", &uid);
    let (status, updated) = api
        .call(
            Some("admin"),
            Method::PUT,
            &format!("/{uid}"),
            Some(json!({"agencyName": "agency-old-2"})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["agencyName"], "agency-old-2");
    let (ok, agency, err) = api.api.kubectl(
        &[
            "get",
            "podidentityassociations.podidentity.io",
            &name,
            "-o",
            "jsonpath={.spec.agencyName}",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(agency, "agency-old-2", "updated in place, not copied");
    let (status, shown) = api
        .call(Some("admin"), Method::GET, &format!("/{uid}"), None)
        .await;
    assert_eq!(
        (status, shown["agencyName"].as_str()),
        (200, Some("agency-old-2"))
    );
    let (status, _) = api
        .call(Some("admin"), Method::DELETE, &format!("/{uid}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, list) = api.list_as("admin").await;
    assert_eq!((status, list), (200, json!([])));
    // Now the service account has none: the API creates the namespaced kind.
    let (status, created) = api.create(api.request("old", "agency-new")).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        api.kubectl_get("old").unwrap()["metadata"]["namespace"],
        ns.as_str()
    );
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
c, ns = i["cluster"], i["namespace"]
def mine(listed):
    return [a for a in (listed.body or []) if a.namespace == ns]
body = PodIdentityAssociation(namespace=ns, service_account="app", agency_name="agency-a",
                              tags=[ResourceTag(key="team", value="payments")])
created = client.create_pod_identity_association(CreatePodIdentityAssociationRequest(cluster_id=c, body=body))
out["created"] = [type(created).__name__, created.uid, created.agency_name, created.tags[0].key, created.created_at]
listed = client.list_pod_identity_associations(ListPodIdentityAssociationsRequest(cluster_id=c))
out["listed"] = [type(listed).__name__, [type(a).__name__ for a in mine(listed)], [a.uid for a in mine(listed)]]
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
bad = PodIdentityAssociation(namespace=ns, service_account="web", agency_name="a",
                             tags=[ResourceTag(key="_sys_x", value="v")])
out["bad_tag"] = refused(lambda: client.create_pod_identity_association(
    CreatePodIdentityAssociationRequest(cluster_id=c, body=bad)))
deleted = client.delete_pod_identity_association(
    DeletePodIdentityAssociationRequest(cluster_id=c, association_id=created.uid))
out["deleted"] = [type(deleted).__name__, deleted.status_code]
out["after"] = [a.uid for a in mine(client.list_pod_identity_associations(
    ListPodIdentityAssociationsRequest(cluster_id=c)))]
print(json.dumps(out))
"#;

/// The cloud's own SDK, signing every request with AK/SK as it always does and carrying the
/// caller's service-account token through its request hook, drives every operation and gets
/// typed answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cce_sdk_drives_the_whole_family() {
    let Some(api) = Api::start("pia-sdk").await else {
        return;
    };
    let input = json!({"endpoint": api.exchange.url, "project": PROJECT, "cluster": CLUSTER,
        "namespace": api.ns, "token": api.tokens["admin"]})
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
    assert!(api.kubectl_get("app").is_none());
}
