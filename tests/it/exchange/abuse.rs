//! The exchange when its API server misbehaves: every request is answered in time.

use std::time::{Duration, Instant};

use crate::common::agents::*;
use crate::common::doubles;
use crate::common::standin::{ReviewAnswer, StandIn};
use crate::common::*;

/// The exchange with an API server that hangs, answers 429, or is down: every request is
/// answered 503 with Retry-After within the review deadline (1 s), with at most two
/// TokenReviews each (one retry), never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_answers_in_time_whatever_the_api_server_does() {
    let api = StandIn::start(false).await;
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = ExchangeUnderTest::new(&api)
        .iam(&iam.url, dir.path())
        .start()
        .await;
    let url = format!(
        "{}/api/v3/projects/{PROJECT}/clusters/{CLUSTER}/assume-agency-for-pod-identity",
        exchange.url
    );
    let token = pod_token("pi-demo", "app", "app-1", "service.cce.pods");
    let c = reqwest::Client::new();
    // The agent's request for a pod's credentials.
    let ask = async || {
        c.post(&url)
            .header("X-Auth-Token", agent_token(NODE))
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .unwrap()
    };
    for (answer, max_reviews) in [
        (ReviewAnswer::Hang, 1),
        (ReviewAnswer::Status(429), 2),
        (ReviewAnswer::Status(503), 2),
    ] {
        api.set_review_answer(answer);
        let before = api.reviews();
        let start = Instant::now();
        let r = ask().await;
        let took = start.elapsed();
        assert_eq!(r.status(), 503, "{answer:?}");
        assert_eq!(r.headers()["retry-after"], "1", "{answer:?}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("retry shortly") && !body.contains("TokenReview failed"),
            "{body}"
        );
        assert!(
            took < Duration::from_millis(1500),
            "{answer:?}: answered after {took:?}"
        );
        let reviews = api.reviews() - before;
        assert!(
            (1..=max_reviews).contains(&reviews),
            "{answer:?}: {reviews} TokenReviews"
        );
    }
    api.set_review_answer(ReviewAnswer::Normal);
    api.set_down(true);
    let start = Instant::now();
    let r = ask().await;
    assert_eq!(r.status(), 503);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    api.set_down(false);
    let r = ask().await;
    assert_eq!(r.status(), 200, "back once the API server is");
    assert_eq!(iam.calls().len(), 1);
}
