//! STS `AssumeRole` (the Query API, `Version=2011-06-15`) for seed 002, SigV4-signed with
//! AWS's own signer (`aws-sigv4`) and the exchange's AWS credentials from the standard chain
//! (`cloud::aws`).
//!
//! Why not `aws-sdk-sts`'s client, although `aws-config` builds the crate (web identity calls
//! it): its orchestrator would bring its own retries, timeouts and error shapes beside the
//! ones every other upstream call here has (`cloud::client`), for one form POST and a few XML
//! fields.

use aws_credential_types::Credentials as AwsCredentials;
use reqwest::Url;

use crate::cloud::aws::{self, AwsKey};
use crate::cloud::client::{ClientError, Upstream, endpoint_url};
use crate::cloud::{Credentials, UpstreamError};

/// One `AssumeRole` call.
#[derive(Debug, Default)]
pub(crate) struct AssumeRole<'a> {
    pub(crate) role_arn: &'a str,
    pub(crate) session_name: &'a str,
    /// Session tags, all transitive.
    pub(crate) tags: Vec<(&'static str, String)>,
    pub(crate) policy: Option<&'a str>,
    pub(crate) external_id: Option<&'a str>,
}

/// What `AssumeRole` answered.
#[derive(Debug)]
pub(crate) struct Assumed {
    pub(crate) credentials: Credentials,
    pub(crate) arn: String,
    pub(crate) assumed_role_id: String,
}

/// STS at one endpoint, for one region.
pub struct Sts {
    client: Upstream,
    url: Url,
    region: String,
    duration: u32,
    /// The exchange's key: the standard chain's, or a fixed one.
    key: AwsKey,
}

/// `https://sts.<region>.amazonaws.com`, the regional endpoint.
pub fn regional_endpoint(region: &str) -> String {
    format!("https://sts.{region}.amazonaws.com")
}

impl Sts {
    /// STS signing with the AWS credentials of the standard chain.
    pub fn new(client: Upstream, endpoint: &str, region: &str, duration: u32) -> Result<Self, ClientError> {
        Ok(Sts {
            url: endpoint_url(endpoint, "/", "--sts-endpoint")?,
            key: AwsKey::chain(region, &client),
            client,
            region: region.to_owned(),
            duration,
        })
    }

    /// Signs with this access key instead of the chain's.
    pub fn with_key(mut self, access_key_id: &str, secret_access_key: &str) -> Self {
        self.key = AwsKey::fixed(access_key_id, secret_access_key);
        self
    }

    /// `AssumeRole` with the exchange's credentials, or with `with` (role chaining).
    pub(crate) async fn assume(
        &self,
        call: &AssumeRole<'_>,
        with: Option<&Credentials>,
    ) -> Result<Assumed, UpstreamError> {
        // One deadline for the call, resolving the key that signs it included: the exchange
        // answers within the agent's deadline.
        let until = tokio::time::Instant::now() + self.client.deadline();
        let identity = match with {
            Some(c) => AwsCredentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                Some(c.security_token.clone()),
                None,
                "chained",
            ),
            None => self.key.credentials(until).await?,
        };
        let body = form(call, self.duration);
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let headers = aws::signed_headers(
            &identity,
            &self.region,
            "sts",
            &self.url,
            content_type,
            body.as_bytes(),
        )?;
        let xml = self
            .client
            .post_by(&self.url, headers, body.into_bytes(), 200, until)
            .await?;
        parse(&String::from_utf8_lossy(&xml))
    }
}

/// The Query API form of `call`.
fn form(call: &AssumeRole<'_>, duration: u32) -> String {
    let mut f = url::form_urlencoded::Serializer::new(String::new());
    f.append_pair("Action", "AssumeRole")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", call.role_arn)
        .append_pair("RoleSessionName", call.session_name)
        .append_pair("DurationSeconds", &duration.to_string());
    for (i, (key, value)) in call.tags.iter().enumerate() {
        let n = i + 1;
        f.append_pair(&format!("Tags.member.{n}.Key"), key)
            .append_pair(&format!("Tags.member.{n}.Value"), value)
            .append_pair(&format!("TransitiveTagKeys.member.{n}"), key);
    }
    if let Some(p) = call.policy {
        f.append_pair("Policy", p);
    }
    if let Some(e) = call.external_id {
        f.append_pair("ExternalId", e);
    }
    f.finish()
}

/// The text of the first `<name>` element of `xml`, entities decoded.
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(
        xml[start..end]
            .trim()
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// The `AssumeRoleResponse` document.
fn parse(xml: &str) -> Result<Assumed, UpstreamError> {
    let field = |name: &str| {
        element(xml, name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| UpstreamError::Invalid(format!("STS AssumeRole answer has no {name}")))
    };
    let expiration = field("Expiration")?
        .parse::<jiff::Timestamp>()
        .map_err(|e| UpstreamError::Invalid(format!("STS Expiration is not a timestamp: {e}")))?;
    let arn = field("Arn")?;
    Ok(Assumed {
        credentials: Credentials {
            account_id: arn.split(':').nth(4).map(str::to_owned),
            ..Credentials::new(
                field("AccessKeyId")?,
                field("SecretAccessKey")?,
                field("SessionToken")?,
                expiration,
            )
        },
        arn,
        assumed_role_id: field("AssumedRoleId")?,
    })
}

/// STS's error `<Code>` in a refusal's message (which carries the start of the XML body).
pub(crate) fn error_code(e: &UpstreamError) -> Option<String> {
    match e {
        UpstreamError::Refused { message, .. } => element(message, "Code"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_assume_role_answer_and_an_error_code() {
        let xml = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
          <AssumeRoleResult><Credentials><AccessKeyId>ASIA1</AccessKeyId>
          <SecretAccessKey>s&amp;k</SecretAccessKey><SessionToken>tok</SessionToken>
          <Expiration>2026-12-01T16:00:00Z</Expiration></Credentials>
          <AssumedRoleUser><AssumedRoleId>AROA1:eks-c-p-1</AssumedRoleId>
          <Arn>arn:aws:sts::123456789012:assumed-role/r/eks-c-p-1</Arn></AssumedRoleUser>
          </AssumeRoleResult></AssumeRoleResponse>"#;
        let a = parse(xml).unwrap();
        assert_eq!(a.credentials.secret_access_key, "s&k");
        assert_eq!(a.credentials.account_id.as_deref(), Some("123456789012"));
        assert_eq!(a.assumed_role_id, "AROA1:eks-c-p-1");
        assert!(parse("<x/>").is_err());
        let refused = UpstreamError::Refused {
            status: 403,
            message: "<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>".into(),
        };
        assert_eq!(error_code(&refused).as_deref(), Some("AccessDenied"));
    }

    #[test]
    fn every_tag_is_transitive() {
        let call = AssumeRole {
            role_arn: "arn:aws:iam::1:role/r",
            session_name: "s",
            tags: vec![("eks-cluster-name", "c 1".into())],
            ..AssumeRole::default()
        };
        let f = form(&call, 900);
        assert!(
            f.contains("Tags.member.1.Key=eks-cluster-name&Tags.member.1.Value=c+1"),
            "{f}"
        );
        assert!(f.contains("TransitiveTagKeys.member.1=eks-cluster-name"), "{f}");
        assert!(!f.contains("Policy") && !f.contains("ExternalId"), "{f}");
    }
}
