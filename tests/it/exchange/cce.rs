//! The exchange on loopback when what it depends on fails: TokenReview on the stand-in API
//! server (set down on purpose), IAM on its double (refusing). The exchange's behaviour with a
//! healthy API server is checked on the real one (`exchange::real::cce`).
//!
//! Tests that read the log run on a current-thread runtime: every server they start runs on
//! the test's thread, whose log events [`Logs`] captures.

use crate::common::agents::*;
use crate::common::doubles::{self, Double, Mode};
use crate::common::standin::StandIn;
use crate::common::{Logs, NODE};

const AUD: &str = "service.cce.pods";

async fn setup(
    tweak: impl FnOnce(&mut pod_identity_webhook::exchange::ExchangeConfig),
) -> (StandIn, Double, RunningExchange, tempfile::TempDir) {
    let api = StandIn::start(false).await;
    let iam = doubles::iam().await;
    let dir = tempfile::tempdir().unwrap();
    let exchange = ExchangeUnderTest::new(&api)
        .iam(&iam.url, dir.path())
        .tweak(tweak)
        .start()
        .await;
    (api, iam, exchange, dir)
}

#[tokio::test]
async fn internal_errors_stay_in_the_log() {
    let (logs, _guard) = Logs::capture();
    let (api, iam, exchange, _dir) = setup(|_| {}).await;
    let agent = agent_token(NODE);
    let pod = pod_token("pi-demo", "app", "app-1", AUD);

    // IAM refuses: the caller learns which agency and where to look, not IAM's words.
    iam.set_mode(Mode::Fail(403, "operator lacks the agent operator role"));
    let (status, body) = redeem(&exchange, &agent, &pod).await;
    assert_eq!(status, 502, "{body}");
    let msg = body["error_msg"].as_str().unwrap();
    assert!(
        msg.contains("agency demo-agency") && msg.contains("log"),
        "{body}"
    );
    assert!(!msg.contains("operator lacks"), "{body}");
    let line = logs.lines_with(&["exchange refused", "reason=\"iam\""]);
    assert!(
        line[0].contains("operator lacks the agent operator role"),
        "{}",
        line[0]
    );

    // The API server unreachable: retry later, and the transport error only in the log.
    api.set_down(true);
    let fresh = pod_token("pi-demo", "app", "app-2", AUD);
    let (status, body) = redeem(&exchange, &agent_token("node-z"), &fresh).await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error_msg"].as_str().unwrap();
    assert!(msg.contains("retry"), "{body}");
    assert!(
        !msg.contains("TokenReview failed") && !msg.contains("Error"),
        "{body}"
    );
    let line = logs.lines_with(&["exchange refused", "reason=\"review_unavailable\""]);
    assert!(line[0].contains("TokenReview failed"), "{}", line[0]);
}
