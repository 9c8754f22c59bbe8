//! `cce`: the client of seed 000, `POST {endpoint}/api/v3/projects/{project_id}/clusters/{cluster_id}/assume-agency-for-pod-identity`.

use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use super::Backend;
use crate::cloud::auth::CloudAuth;
use crate::cloud::cce_assume_agency::{self, AssumeAgencyRequest};
use crate::cloud::client::{ClientError, Upstream, endpoint_url};
use crate::cloud::{Credentials, UpstreamError};

pub struct CceBackend {
    client: Upstream,
    url: reqwest::Url,
    project_id: String,
    auth: CloudAuth,
}

impl CceBackend {
    pub fn new(
        client: Upstream,
        endpoint: &str,
        project_id: &str,
        cluster_id: &str,
        auth: CloudAuth,
    ) -> Result<Self, ClientError> {
        let url = endpoint_url(
            endpoint,
            &cce_assume_agency::path(project_id, cluster_id),
            "--cce-endpoint",
        )?;
        Ok(CceBackend {
            client,
            url,
            project_id: project_id.to_owned(),
            auth,
        })
    }
}

impl Backend for CceBackend {
    fn fetch<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Credentials, UpstreamError>> {
        async move {
            let request = AssumeAgencyRequest {
                token: Some(token.to_owned()),
            };
            let body = serde_json::to_vec(&request).unwrap_or_default();
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            // The SDK names the project in a signed request.
            if self.auth.is_signed()
                && let Ok(project) = HeaderValue::from_str(&self.project_id)
            {
                headers.insert("x-project-id", project);
            }
            self.auth.apply("POST", &self.url, &mut headers, &body)?;
            self.client
                .post(&self.url, headers, body, 200)
                .await
                .and_then(|b| Credentials::from_seed_000(&b))
        }
        .boxed()
    }
}
