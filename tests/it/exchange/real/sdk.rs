//! The real SDK through the agent and the exchange, whose TokenReview is the real API
//! server's, of real bound tokens; and the exchange's IAM signature checked by the SDK's signer.

use std::time::Duration;

use pod_identity_webhook::profile::Provider;
use pod_identity_webhook::testing::AccessKey;

use super::cce::suffix;
use crate::common::NODE;
use crate::common::agents::*;
use crate::common::apiserver::ApiServer;
use crate::common::doubles;
use crate::common::python::{HC_SCRIPT, assert_sdk_signature, sdk, write_token};

/// SDK → agent (cce backend, the agent's real token) → exchange → TokenReview (the real API
/// server) + IAM (double): the SDK ends up with the credentials IAM issued for the
/// association's agency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_from_the_sdk_to_iam() {
    let Some(api) = ApiServer::shared() else { return };
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = ExchangeUnderTest::new(api)
        .iam(&iam.url, dir.path())
        .start()
        .await;
    let agent_token = api.agent_token(NODE).await;
    let agent = AgentUnderTest::new(
        Provider::Cce,
        cce_backend_as(
            &exchange.url,
            dir.path(),
            Duration::from_secs(4),
            None,
            &agent_token,
        ),
    )
    .start()
    .await;
    let pod = format!("worker-5d8f-{}", suffix());
    let token = api
        .pod_token("pi-demo", "worker", &pod, NODE, "service.cce.pods")
        .await;
    let file = write_token(dir.path(), &token);
    let parsed = sdk(HC_SCRIPT, Provider::Cce, &agent.url, &file).await;
    assert_eq!(parsed["ak"], "IAMAK00001");
    assert_eq!(
        parsed["sk"], "iam-secret-1-worker-agency",
        "the worker association's agency"
    );
    assert_eq!(parsed["token"], "iam-security-token-1");
    let calls = iam.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].body["auth"]["identity"]["assume_role"]["agency_name"],
        "worker-agency"
    );
    assert_eq!(
        calls[0].body["auth"]["identity"]["assume_role"]["session_user"]["name"],
        format!("cce-{CLUSTER}-{pod}")
    );
    // The agent's token, then the pod's.
    assert_eq!(exchange.reviews_for("pod-identity-exchange"), 1);
    assert_eq!(exchange.reviews_for("service.cce.pods"), 1);
}

/// The exchange's IAM call with AK/SK: IAM requires `Content-Type: application/json;charset=utf8`,
/// and the signature must cover exactly that value (it once covered `application/json` while
/// sending the other, which IAM refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_iam_requests_signed_with_ak_sk_verify_with_the_sdk() {
    let Some(api) = ApiServer::shared() else { return };
    let iam = doubles::iam().await;
    let key = AccessKey {
        ak: "AKOPERATOR".into(),
        sk: "operator/secret+key".into(),
        security_token: None,
    };
    let exchange = ExchangeUnderTest::new(api)
        .iam_signed(&iam.url, key)
        .start()
        .await;
    let pod = format!("app-1-{}", suffix());
    let token = api
        .pod_token("pi-demo", "app", &pod, NODE, "service.cce.pods")
        .await;
    let r = reqwest::Client::new()
        .post(exchange.api())
        .header("X-Auth-Token", api.agent_token(NODE).await)
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let call = &iam.calls()[0];
    assert_eq!(call.header("Content-Type"), Some("application/json;charset=utf8"));
    assert!(call.header("X-Auth-Token").is_none());
    assert_sdk_signature(call, "AKOPERATOR", "operator/secret+key");
}
