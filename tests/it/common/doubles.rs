//! Test doubles of the cloud APIs the agent and the exchange call, serving exactly the seed
//! request/response shapes and recording every call: IAM's securitytokens (seed 003) and the
//! CCE assume-agency-for-pod-identity API (seed 000).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// The body as received, byte for byte (what a signature covers).
    pub raw: String,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the double answers next.
#[derive(Debug, Clone)]
pub enum Mode {
    Ok,
    /// An error status with a body in the cloud's shape.
    Fail(u16, &'static str),
    /// Sleeps before answering OK.
    Slow(Duration),
}

#[derive(Clone)]
pub struct Double {
    pub url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    mode: Arc<Mutex<Mode>>,
    /// Lifetime of issued credentials.
    lifetime: Arc<Mutex<i64>>,
    counter: Arc<Mutex<u64>>,
}

impl Double {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    pub fn set_lifetime(&self, seconds: i64) {
        *self.lifetime.lock().unwrap() = seconds;
    }

    async fn start(router: Router<Double>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let d = Double {
            url: format!("http://{}", listener.local_addr().unwrap()),
            calls: Default::default(),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            lifetime: Arc::new(Mutex::new(3600)),
            counter: Default::default(),
        };
        let app = router.with_state(d.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        d
    }

    /// Records the call and applies the mode; `Some(response)` when the mode answers.
    async fn record(&self, path: &str, headers: &HeaderMap, body: &Bytes) -> Result<u64, Response> {
        let call = Call {
            path: path.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
            raw: String::from_utf8_lossy(body).into_owned(),
        };
        self.calls.lock().unwrap().push(call);
        let mode = self.mode.lock().unwrap().clone();
        match mode {
            Mode::Ok => {}
            Mode::Slow(d) => tokio::time::sleep(d).await,
            Mode::Fail(status, msg) => {
                let body = json!({"error_code": format!("TEST.{status}"), "error_msg": msg});
                return Err((StatusCode::from_u16(status).unwrap(), body.to_string()).into_response());
            }
        }
        let mut n = self.counter.lock().unwrap();
        *n += 1;
        Ok(*n)
    }

    fn expiry(&self, fraction_digits: usize) -> String {
        let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(*self.lifetime.lock().unwrap());
        let fmt = if fraction_digits == 6 {
            "%Y-%m-%dT%H:%M:%S%.6fZ"
        } else {
            "%Y-%m-%dT%H:%M:%S%.3fZ"
        };
        t.strftime(fmt).to_string()
    }
}

/// IAM: `POST /v3.0/OS-CREDENTIAL/securitytokens` → 201 `{"credential": {...}}` (seed 003).
pub async fn iam() -> Double {
    async fn handler(State(d): State<Double>, headers: HeaderMap, body: Bytes) -> Response {
        let n = match d
            .record("/v3.0/OS-CREDENTIAL/securitytokens", &headers, &body)
            .await
        {
            Ok(n) => n,
            Err(r) => return r,
        };
        let agency = serde_json::from_slice::<Value>(&body).unwrap_or_default()["auth"]["identity"]["assume_role"]["agency_name"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let body = json!({"credential": {
            "access": format!("IAMAK{n:05}"),
            "expires_at": d.expiry(6),
            "secret": format!("iam-secret-{n}-{agency}"),
            "securitytoken": format!("iam-security-token-{n}"),
        }});
        (StatusCode::CREATED, body.to_string()).into_response()
    }
    Double::start(Router::new().route("/v3.0/OS-CREDENTIAL/securitytokens", post(handler))).await
}

/// The signature part of the tokens the tests mint as genuine (`common::unsigned`); the CCE
/// double refuses any other, as the real API refuses a forged token.
const GENUINE: &str = "c2lnbmF0dXJl";

/// CCE: `POST /api/v3/projects/{p}/clusters/{c}/assume-agency-for-pod-identity` → seed 000.
pub async fn cce() -> Double {
    async fn handler(
        State(d): State<Double>,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let n = match d.record(uri.path(), &headers, &body).await {
            Ok(n) => n,
            Err(r) => return r,
        };
        let token = serde_json::from_slice::<Value>(&body).unwrap_or_default()["token"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if !token.ends_with(&format!(".{GENUINE}")) {
            let body = json!({"error_code": "CCE.01401001", "error_msg": "invalid service account token"});
            return (StatusCode::UNAUTHORIZED, body.to_string()).into_response();
        }
        let body = json!({
            "assumedAgency": {"urn": "sts::acct::assumed-agency:demo-agency/cce-c-p-1", "id": "agencyid:cce-c-p-1"},
            "audience": "service.cce.pods",
            "credentials": {
                "accessKeyId": format!("CCEAK{n:05}"),
                "secretAccessKey": format!("cce-secret-{n}"),
                "securityToken": format!("cce-security-token-{n}"),
                "expiration": d.expiry(3),
            },
            "podIdentityAssociationId": "81f143f5-f469-4fb6-b17c-8f52af73184c",
            "subject": {"namespace": "pi-demo", "serviceAccount": "app"},
        });
        (StatusCode::OK, body.to_string()).into_response()
    }
    Double::start(Router::new().route(
        "/api/v3/projects/{p}/clusters/{c}/assume-agency-for-pod-identity",
        post(handler),
    ))
    .await
}
