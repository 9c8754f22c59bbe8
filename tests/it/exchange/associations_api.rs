//! The seed 001 association API on the exchange where a fault is injected: a write conflict
//! between the exchange's read and its write (the stand-in's `interfere`). Everything else of
//! the API runs on the real API server (`exchange::real::associations_api`).

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::agents::*;
use crate::common::standin::StandIn;
use crate::common::unsigned_on;

struct Api {
    standin: StandIn,
    exchange: RunningExchange,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Self {
        let standin = StandIn::start(false).await;
        let dir = tempfile::tempdir().unwrap();
        // IAM is never called by this API.
        let reviewer = Arc::new(kube_reviewer(&standin));
        let exchange = ExchangeUnderTest::new(&standin)
            .iam("http://127.0.0.1:9", dir.path())
            .reviewer(reviewer)
            .start()
            .await;
        Api {
            standin,
            exchange,
            _dir: dir,
        }
    }

    /// `method` on `path` (under the collection) as the admin.
    async fn call(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        let url = format!(
            "{}/api/v3/projects/{PROJECT}/clusters/{CLUSTER}/pod-identity-associations{path}",
            self.exchange.url
        );
        // A user token of `platform/admin` for the API server's own audience.
        let token = unsigned_on(
            None,
            "platform",
            "admin",
            "shell",
            "https://kubernetes.default.svc.cluster.local",
            jiff::Timestamp::now().as_second() + 3600,
        );
        let r = reqwest::Client::new()
            .request(method, url)
            .header("X-Auth-Token", token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn an_update_conflicting_once_is_retried_twice_is_409() {
    let api = Api::start().await;
    let request = json!({"namespace": "pi-demo", "serviceAccount": "app", "agencyName": "agency-a",
        "tags": [{"key": "team", "value": "payments"}]});
    let (status, created) = api.call(Method::POST, "", request).await;
    assert_eq!(status, 201, "{created}");
    let id = format!("/{}", created["uid"].as_str().unwrap());
    api.standin.interfere(1);
    let (status, body) = api
        .call(Method::PUT, &id, json!({"agencyName": "agency-b"}))
        .await;
    assert_eq!((status, &body["agencyName"]), (200, &json!("agency-b")), "{body}");
    // The other writer's change, made between the read and the write, is kept.
    let other = json!({"key": "writer-2", "value": "other"});
    assert_eq!(body["tags"][1], other, "{body}");
    assert_eq!(
        api.standin.object("pi-demo/app").unwrap()["spec"]["tags"][1],
        other
    );
    api.standin.interfere(2);
    let (status, body) = api
        .call(Method::PUT, &id, json!({"agencyName": "agency-c"}))
        .await;
    assert_eq!(
        (status, &body["error_code"]),
        (409, &json!("CCE.01409002")),
        "{body}"
    );
    let msg = body["error_msg"].as_str().unwrap();
    assert!(msg.contains("changed concurrently"), "{msg}");
    assert_eq!(
        api.standin.object("pi-demo/app").unwrap()["spec"]["agencyName"],
        "agency-b"
    );
}
