//! The agent checks tokens against the real API server's signing keys before any upstream
//! call: forged ones cost it none, and starve no pod.

use std::time::Duration;

use pod_identity_webhook::agent::metrics::Refusal;
use pod_identity_webhook::profile::Provider;

use crate::common::agents::*;
use crate::common::apiserver::ApiServer;
use crate::common::doubles;
use crate::common::tokens::{AUD, foreign, keys_of};
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_cost_the_agent_no_upstream_call_and_starve_no_pod() {
    let Some(api) = ApiServer::shared() else { return };
    let (keys, _) = keys_of(api, Duration::from_secs(10)).await;
    // The whole path: the agent's upstream is the exchange, TokenReview and IAM behind it.
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = ExchangeUnderTest::new(api)
        .iam(&iam.url, dir.path())
        .start()
        .await;
    let agent_token = api.agent_token(NODE).await;
    let backend = cce_backend_as(
        &exchange.url,
        dir.path(),
        Duration::from_secs(2),
        None,
        &agent_token,
    );
    // A node budget of 20 misses: 100 forged tokens would spend it five times over.
    let agent = AgentUnderTest::new(Provider::Cce, backend)
        .tweak(|c| {
            c.cache.upstream_rate = 0.001;
            c.cache.upstream_burst = 20.0;
            c.issuer = Some(keys.clone());
        })
        .start()
        .await;
    let port = agent
        .url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    for source in 2..=6u8 {
        let c = reqwest::Client::builder()
            .local_address(Some([127, 0, 0, source].into()))
            .build()
            .unwrap();
        for i in 0..20 {
            let forged = if i % 2 == 0 {
                unsigned(
                    "pi-demo",
                    "app",
                    &format!("forged-{source}-{i}"),
                    AUD,
                    jiff::Timestamp::now().as_second() + 3600,
                )
            } else {
                foreign(&format!("kid-{source}-{i}"), AUD)
            };
            let r = c
                .get(format!("http://127.0.0.1:{port}/v1/credentials"))
                .header("Authorization", forged)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{}", r.text().await.unwrap());
        }
    }
    let saw = crate::common::metrics_of(&exchange.url).await;
    assert!(
        saw.contains("podidentity_exchange_token_reviews_total{token=\"pod\"} 0\n"),
        "no upstream call for a forged token:\n{saw}"
    );
    assert_eq!(iam.calls().len(), 0);
    assert_eq!(agent.metrics.refused(Refusal::Unverified), 100);
    // A real pod's first request.
    let real = api
        .pod_token(
            "pi-demo",
            "app",
            &format!("issuer-agent-{:08x}", fastrand::u32(..)),
            NODE,
            AUD,
        )
        .await;
    let r = credentials_request(&agent.url, &real).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(iam.calls().len(), 1);
}
