//! The seed 001 association API served: create, list, show, update and delete pod identity
//! associations, stored only as `PodIdentityAssociation` objects in the API server (the shared
//! state of every replica). The caller's `X-Auth-Token` is reviewed by TokenReview (for the
//! API server's own audience), and then every read and write of the call is made **with that
//! token**: the API server authorises it (RBAC, as for `kubectl`), admits it (the
//! `pod-identity-pass` policy: granting an agency needs its `pass`) and audits it as the
//! caller. The exchange lends no permission of its own: it only reads, to find which object
//! an id names. Refusals come back in the cloud's error shape, with the API server's reason.
//!
//! Reads go to the API server rather than the watch-fed index: the index keeps only what
//! admission needs (no tags, no timestamps), and a caller reads its own writes.
//!
//! New associations are namespaced objects (`iam.podidentity.io`, in the service account's
//! namespace, named after it); the cluster-scoped ones they replace are listed, shown, updated
//! and deleted too, for the release that still reads them.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::core::{ObjectMeta, ResourceExt};

use super::refusal::error_response;
use super::review::{self, Holder, TokenReviewer};
use crate::association::crd::{
    CrdTag, MODIFIED_AT, PodIdentityAssociation, PodIdentityAssociationSpec, legacy, to_association,
};
use crate::association::{Association, AssociationSpec};
use crate::cloud::cce_association::{CreateAssociation, UpdateAssociation};
use crate::expiring::Expiring;
use crate::rate_limit::{KeyedBuckets, TokenHash};
use crate::{http, kube_client};

pub(super) struct ApiState {
    pub(super) project_id: String,
    pub(super) cluster_id: String,
    pub(super) reviewer: Arc<dyn TokenReviewer>,
    /// The exchange's own reads: which object an id (a uid) names.
    pub(super) own: kube::Client,
    /// The API server, bounded, without credentials: each call goes with its caller's token.
    pub(super) as_callers: kube::Config,
    /// What TokenReview said of a token lately (its user, or why not), by the token's hash.
    pub(super) callers: Expiring<Result<Holder, String>>,
    /// TokenReviews a client address may cause: a new token is a review, a known one is not.
    pub(super) reviews_per_client: KeyedBuckets<IpAddr>,
}

/// TokenReviews of new tokens per client address of the association API: a burst of 20, then
/// 2 a second (a person or a pipeline presents a handful of tokens; a flood of forgeries is cut).
pub(super) const REVIEWS_PER_CLIENT: (f64, f64) = (2.0, 20.0);

/// An answer other than success, in the cloud's error body.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        status,
        code,
        message: message.into(),
    }
}

type Answer = Result<Response, Refused>;

/// The resource the association API acts on, as RBAC and the API server name it.
const PLURAL: &str = "podidentityassociations";
const GROUP: &str = "iam.podidentity.io";
/// The admission policy that holds every writer to the pass rule (manifests/base/pass-policy.yaml).
const PASS_POLICY: &str = "pod-identity-pass";

/// A caller the API server authenticated, and the token its calls are made with.
struct Caller {
    holder: Holder,
    token: String,
}

impl Caller {
    /// Whether this caller may `verb` associations, cluster-wide (SelfSubjectAccessReview, which
    /// any authenticated user may ask of itself).
    async fn may(&self, s: &ApiState, verb: &str) -> Result<bool, Refused> {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.to_owned()),
                    resource: Some(PLURAL.to_owned()),
                    verb: Some(verb.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let client = self.client(s)?;
        let answer = Api::<SelfSubjectAccessReview>::all(client)
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| self.refused(verb, e))?;
        Ok(answer.status.is_some_and(|st| st.allowed))
    }

    fn client(&self, s: &ApiState) -> Result<kube::Client, Refused> {
        kube_client::as_holder_of(&s.as_callers, &self.token).map_err(|e| {
            tracing::warn!(error = %e, "association API: no client for the caller");
            refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "CCE.01500003",
                "the server cannot call the Kubernetes API as the caller; its log has the cause",
            )
        })
    }

    /// The associations of every namespace, as this caller.
    fn objects(&self, s: &ApiState) -> Result<Api<PodIdentityAssociation>, Refused> {
        Ok(Api::all(self.client(s)?))
    }

    /// The associations of `namespace`, as this caller.
    fn objects_in(&self, s: &ApiState, namespace: &str) -> Result<Api<PodIdentityAssociation>, Refused> {
        Ok(Api::namespaced(self.client(s)?, namespace))
    }

    /// The cluster-scoped associations, as this caller.
    fn legacy(&self, s: &ApiState) -> Result<Api<legacy::PodIdentityAssociation>, Refused> {
        Ok(Api::all(self.client(s)?))
    }

    /// What the API server answered this caller's `verb`, in the cloud's shape: its RBAC's or
    /// an admission policy's refusal is the caller's (403, with the API server's reason).
    fn refused(&self, verb: &str, e: kube::Error) -> Refused {
        let user = &self.holder.username;
        match e {
            kube::Error::Api(s) if s.is_forbidden() && s.message.contains(PASS_POLICY) => {
                tracing::info!(%user, verb, "association API: the caller may not pass the agency");
                // The policy's own message names the missing permission and the Role to ask for.
                let why = s
                    .message
                    .split_once("denied request: ")
                    .map_or(&*s.message, |(_, m)| m);
                refused(StatusCode::FORBIDDEN, "CCE.01403006", why)
            }
            kube::Error::Api(s) if s.is_forbidden() => forbidden(user, verb, Some(&s.message)),
            kube::Error::Api(s) if s.code == 401 => refused(
                StatusCode::UNAUTHORIZED,
                "CCE.01401011",
                "X-Auth-Token is not a valid, unexpired Kubernetes token for the API server",
            ),
            e => kube_failed(e),
        }
    }
}

/// `operation`'s answer (given the caller) once the caller is authenticated, or the refusal
/// in the cloud's error body.
async fn admitted<F: Future<Output = Answer>>(
    s: &ApiState,
    (project_id, cluster_id): (&str, &str),
    (peer, headers): (SocketAddr, &HeaderMap),
    operation: impl FnOnce(Caller) -> F,
) -> Response {
    let result = match s.admit(project_id, cluster_id, peer.ip(), headers).await {
        Ok(caller) => operation(caller).await,
        Err(r) => Err(r),
    };
    result.unwrap_or_else(|r| error_response(r.status, r.code, &r.message))
}

fn record(status: StatusCode, value: &impl serde::Serialize) -> Response {
    http::json(status, serde_json::to_vec(value).unwrap_or_default())
}

pub(super) async fn create(
    State(s): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((project, cluster)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admitted(&s, (&project, &cluster), (peer, &headers), |caller| {
        s.create(caller, &body)
    })
    .await
}

pub(super) async fn list(
    State(s): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((project, cluster)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    admitted(&s, (&project, &cluster), (peer, &headers), |caller| {
        s.list(caller)
    })
    .await
}

pub(super) async fn show(
    State(s): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((project, cluster, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    admitted(&s, (&project, &cluster), (peer, &headers), |caller| {
        s.show(caller, &id)
    })
    .await
}

pub(super) async fn update(
    State(s): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((project, cluster, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admitted(&s, (&project, &cluster), (peer, &headers), |caller| {
        s.update(caller, &id, &body)
    })
    .await
}

pub(super) async fn delete(
    State(s): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((project, cluster, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    admitted(&s, (&project, &cluster), (peer, &headers), |caller| {
        s.delete(caller, &id)
    })
    .await
}

impl ApiState {
    /// The path names this cluster and the token is the API server's: its holder.
    async fn admit(
        &self,
        project_id: &str,
        cluster_id: &str,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> Result<Caller, Refused> {
        if project_id != self.project_id || cluster_id != self.cluster_id {
            return Err(refused(
                StatusCode::NOT_FOUND,
                "CCE.01404001",
                format!("cluster {cluster_id} of project {project_id} is not served here"),
            ));
        }
        self.authenticate(client, headers).await
    }

    /// The user of `X-Auth-Token`, reviewed for the API server's own audience: a token made for
    /// another audience (a pod's `service.cce.pods` token, say) must not act as its holder here.
    async fn authenticate(&self, client: IpAddr, headers: &HeaderMap) -> Result<Caller, Refused> {
        let token = super::redeem::auth_token(headers).ok_or_else(|| {
            refused(
                StatusCode::UNAUTHORIZED,
                "CCE.01401010",
                "X-Auth-Token is missing: send a Kubernetes bearer token (e.g. `kubectl create token`)",
            )
        })?;
        let hash = TokenHash::of(token);
        let reviewed = match self.callers.get(&hash) {
            Some(reviewed) => reviewed,
            None => {
                if let Err(wait) = self.reviews_per_client.take(client.to_canonical()) {
                    tracing::info!(%client, "association API: too many new tokens from one address");
                    return Err(refused(
                        StatusCode::TOO_MANY_REQUESTS,
                        "CCE.01429001",
                        format!(
                            "too many new tokens from this address; retry in {} s with a token already presented",
                            wait.as_secs().max(1)
                        ),
                    ));
                }
                // A failure to ask is not remembered: only what the API server said.
                let review = self.reviewer.review(token, None).await.map_err(unavailable)?;
                let reviewed = review::holder(review, None);
                self.callers.put(hash, reviewed.clone());
                reviewed
            }
        };
        match reviewed {
            Ok(holder) => Ok(Caller {
                holder,
                token: token.to_owned(),
            }),
            Err(why) => {
                tracing::info!(why, "association API token refused");
                Err(refused(
                    StatusCode::UNAUTHORIZED,
                    "CCE.01401011",
                    "X-Auth-Token is not a valid, unexpired Kubernetes token for the API server",
                ))
            }
        }
    }

    async fn create(&self, caller: Caller, body: &[u8]) -> Answer {
        let req: CreateAssociation = serde_json::from_slice(body).map_err(bad_body)?;
        let valid = AssociationSpec {
            namespace: req.namespace,
            service_account: req.service_account,
            agency_name: Some(req.agency_name.unwrap_or_default()),
            tags: req.tags,
            token_expiration_seconds: req.token_expiration_seconds,
            ..AssociationSpec::default()
        }
        .validate()
        .map_err(|e| refused(StatusCode::BAD_REQUEST, "CCE.01400003", e.to_string()))?;
        let (namespace, name) = (valid.namespace.clone(), valid.service_account.clone());
        // One per service account: an old cluster-scoped association of it counts.
        let old = Api::<legacy::PodIdentityAssociation>::all(self.own.clone());
        if let Some(existing) = absent_is_none(old.get_opt(&format!("{namespace}.{name}")).await)? {
            return Err(exists(&namespace, &name, &existing.uid().unwrap_or_default()));
        }
        let obj = PodIdentityAssociation {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                annotations: Some(BTreeMap::from([(MODIFIED_AT.to_owned(), now())])),
                ..ObjectMeta::default()
            },
            spec: PodIdentityAssociationSpec {
                service_account: valid.service_account,
                agency_name: valid.agency_name,
                role_arn: None,
                tags: valid
                    .tags
                    .into_iter()
                    .map(|t| CrdTag {
                        key: t.key,
                        value: t.value,
                    })
                    .collect(),
                token_expiration_seconds: valid.token_expiration_seconds,
                // The EKS fields: this API (the CCE family) sets agencies only.
                target_role_arn: None,
                disable_session_tags: false,
                policy: None,
            },
        };
        match caller
            .objects_in(self, &namespace)?
            .create(&PostParams::default(), &obj)
            .await
        {
            Ok(created) => Ok(record(StatusCode::CREATED, &self.to_record(&created)?)),
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                let existing = Api::<PodIdentityAssociation>::namespaced(self.own.clone(), &namespace)
                    .get(&name)
                    .await
                    .map_err(kube_failed)?;
                Err(exists(&namespace, &name, &existing.uid().unwrap_or_default()))
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => Err(refused(
                StatusCode::BAD_REQUEST,
                "CCE.01400003",
                format!("namespace {namespace} does not exist: create it and its service account first"),
            )),
            Err(e) => Err(caller.refused("create", e)),
        }
    }

    /// Every association the caller may list: the namespaced ones, and the old ones unless
    /// their CRD is gone or the caller may not list them.
    async fn list(&self, caller: Caller) -> Answer {
        let all = caller
            .objects(self)?
            .list(&ListParams::default())
            .await
            .map_err(|e| caller.refused("list", e))?;
        let mut stored: Vec<Stored> = all.items.into_iter().map(Stored::Namespaced).collect();
        match caller.legacy(self)?.list(&ListParams::default()).await {
            Ok(old) => stored.extend(old.items.into_iter().map(Stored::Legacy)),
            Err(e) if kube_client::is_absent(&e) || matches!(&e, kube::Error::Api(s) if s.is_forbidden()) => {
            }
            Err(e) => return Err(caller.refused("list", e)),
        }
        let records: Vec<Association> = stored.iter().filter_map(|o| self.record_of(o)).collect();
        Ok(record(StatusCode::OK, &records))
    }

    async fn show(&self, caller: Caller, id: &str) -> Answer {
        let found = self.find(&caller, "get", id).await?;
        let read = match &found {
            Stored::Namespaced(o) => caller
                .objects_in(self, &o.namespace().unwrap_or_default())?
                .get(&o.name_any())
                .await
                .map(Stored::Namespaced),
            Stored::Legacy(o) => caller.legacy(self)?.get(&o.name_any()).await.map(Stored::Legacy),
        };
        let obj = match read {
            Ok(obj) if obj.uid().as_deref() == Some(id) => obj,
            Ok(_) => return Err(not_found(id)),
            Err(kube::Error::Api(s)) if s.is_not_found() => return Err(not_found(id)),
            Err(e) => return Err(caller.refused("get", e)),
        };
        Ok(record(StatusCode::OK, &self.to_record_of(&obj)?))
    }

    async fn update(&self, caller: Caller, id: &str, body: &[u8]) -> Answer {
        let req: UpdateAssociation = serde_json::from_slice(body).map_err(bad_body)?;
        let mut obj = self.find(&caller, "update", id).await?;
        let current = self.to_record_of(&obj)?;
        for (field, given, current) in [
            ("namespace", &req.namespace, &current.namespace),
            ("serviceAccount", &req.service_account, &current.service_account),
        ] {
            if given.as_ref().is_some_and(|g| g != current) {
                return Err(refused(
                    StatusCode::BAD_REQUEST,
                    "CCE.01400005",
                    format!("{field} is immutable: delete the association and create another"),
                ));
            }
        }
        // One retry on a conflict, from a fresh read: a concurrent writer's change is never
        // overwritten, and a second conflict is the caller's to resolve. The write is the
        // caller's, so the pass policy judges it: only a new grant needs the agency's pass.
        let client = caller.client(self)?;
        for attempt in 0..2 {
            let mut spec = obj.fields().clone();
            spec.agency_name = req.agency_name.clone();
            self.check(&obj, &spec)?;
            *obj.fields_mut() = spec;
            obj.annotations_mut().insert(MODIFIED_AT.to_owned(), now());
            match obj.replace(client.clone()).await {
                Ok(updated) => return Ok(record(StatusCode::OK, &self.to_record_of(&updated)?)),
                Err(kube::Error::Api(s)) if s.is_conflict() && attempt == 0 => {
                    obj = match obj.reread(self.own.clone()).await.map_err(kube_failed)? {
                        Some(fresh) if fresh.uid().as_deref() == Some(id) => fresh,
                        _ => return Err(not_found(id)),
                    };
                }
                Err(kube::Error::Api(s)) if s.is_conflict() => break,
                Err(kube::Error::Api(s)) if s.is_not_found() => return Err(not_found(id)),
                Err(e) => return Err(caller.refused("update", e)),
            }
        }
        Err(refused(
            StatusCode::CONFLICT,
            "CCE.01409002",
            format!("association {id} was changed concurrently; read it again and retry"),
        ))
    }

    /// The association API's rules on the record `spec` would make (the one validation of
    /// every source).
    fn check(&self, obj: &Stored, spec: &PodIdentityAssociationSpec) -> Result<(), Refused> {
        let mut candidate = obj.as_namespaced().map_err(|e| invalid_record(obj, e))?;
        candidate.spec = spec.clone();
        to_association(&candidate, None)
            .map(drop)
            .map_err(|e| refused(StatusCode::BAD_REQUEST, "CCE.01400003", e.to_string()))
    }

    async fn delete(&self, caller: Caller, id: &str) -> Answer {
        let obj = self.find(&caller, "delete", id).await?;
        // The uid precondition: an object recreated under the same name in between is another
        // association, and stays.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(id.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match obj.delete(caller.client(self)?, &params).await {
            Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Err(not_found(id)),
            Err(e) => Err(caller.refused("delete", e)),
        }
    }

    /// Every association, of both kinds, as the exchange reads them.
    async fn all(&self) -> Result<Vec<Stored>, Refused> {
        let new = Api::<PodIdentityAssociation>::all(self.own.clone())
            .list(&ListParams::default())
            .await
            .map_err(kube_failed)?;
        let mut all: Vec<Stored> = new.items.into_iter().map(Stored::Namespaced).collect();
        let old = Api::<legacy::PodIdentityAssociation>::all(self.own.clone())
            .list(&ListParams::default())
            .await;
        match old {
            Ok(old) => all.extend(old.items.into_iter().map(Stored::Legacy)),
            Err(e) if kube_client::is_absent(&e) => {}
            Err(e) => return Err(kube_failed(e)),
        }
        Ok(all)
    }

    /// The object whose uid is `id` (ids are uids, names are not, so this lists), read by the
    /// exchange itself: what the caller may do with it the API server decides on the call. That
    /// an id names nothing is told only to a caller who may `verb` associations at all, as the
    /// API server authorises before it looks (else the answer would tell what exists).
    async fn find(&self, caller: &Caller, verb: &str, id: &str) -> Result<Stored, Refused> {
        if let Some(obj) = self
            .all()
            .await?
            .into_iter()
            .find(|o| o.uid().as_deref() == Some(id))
        {
            return Ok(obj);
        }
        match caller.may(self, verb).await? {
            true => Err(not_found(id)),
            false => Err(forbidden(&caller.holder.username, verb, None)),
        }
    }

    fn to_record(&self, obj: &PodIdentityAssociation) -> Result<Association, Refused> {
        self.to_record_of(&Stored::Namespaced(obj.clone()))
    }

    fn to_record_of(&self, obj: &Stored) -> Result<Association, Refused> {
        obj.as_namespaced()
            .and_then(|o| to_association(&o, Some(&self.cluster_id)))
            .map_err(|e| invalid_record(obj, e))
    }

    /// The record of a listed object; one that is not valid is logged and left out.
    fn record_of(&self, obj: &Stored) -> Option<Association> {
        self.to_record_of(obj)
            .inspect_err(|r| tracing::warn!(error = r.message, "association left out of the list"))
            .ok()
    }
}

/// An association as stored: a namespaced object, or an old cluster-scoped one.
#[derive(Clone)]
enum Stored {
    Namespaced(PodIdentityAssociation),
    Legacy(legacy::PodIdentityAssociation),
}

impl Stored {
    fn uid(&self) -> Option<String> {
        match self {
            Stored::Namespaced(o) => o.uid(),
            Stored::Legacy(o) => o.uid(),
        }
    }

    fn name(&self) -> String {
        match self {
            Stored::Namespaced(o) => o.name_any(),
            Stored::Legacy(o) => o.name_any(),
        }
    }

    fn fields(&self) -> &PodIdentityAssociationSpec {
        match self {
            Stored::Namespaced(o) => &o.spec,
            Stored::Legacy(o) => &o.spec.fields,
        }
    }

    fn fields_mut(&mut self) -> &mut PodIdentityAssociationSpec {
        match self {
            Stored::Namespaced(o) => &mut o.spec,
            Stored::Legacy(o) => &mut o.spec.fields,
        }
    }

    fn annotations_mut(&mut self) -> &mut BTreeMap<String, String> {
        match self {
            Stored::Namespaced(o) => o.annotations_mut(),
            Stored::Legacy(o) => o.annotations_mut(),
        }
    }

    /// The object as the namespaced kind (an old one as its twin, keeping its uid and times).
    fn as_namespaced(&self) -> Result<PodIdentityAssociation, crate::association::Invalid> {
        match self {
            Stored::Namespaced(o) => Ok(o.clone()),
            Stored::Legacy(o) => legacy::twin(o, true),
        }
    }

    async fn replace(&self, client: kube::Client) -> Result<Stored, kube::Error> {
        let (pp, name) = (PostParams::default(), self.name());
        match self {
            Stored::Namespaced(o) => {
                let api = Api::namespaced(client, &o.namespace().unwrap_or_default());
                api.replace(&name, &pp, o).await.map(Stored::Namespaced)
            }
            Stored::Legacy(o) => Api::all(client).replace(&name, &pp, o).await.map(Stored::Legacy),
        }
    }

    async fn reread(&self, client: kube::Client) -> Result<Option<Stored>, kube::Error> {
        let name = self.name();
        match self {
            Stored::Namespaced(o) => {
                let api =
                    Api::<PodIdentityAssociation>::namespaced(client, &o.namespace().unwrap_or_default());
                Ok(api.get_opt(&name).await?.map(Stored::Namespaced))
            }
            Stored::Legacy(_) => Ok(Api::all(client).get_opt(&name).await?.map(Stored::Legacy)),
        }
    }

    async fn delete(&self, client: kube::Client, params: &DeleteParams) -> Result<(), kube::Error> {
        let name = self.name();
        match self {
            Stored::Namespaced(o) => {
                let api =
                    Api::<PodIdentityAssociation>::namespaced(client, &o.namespace().unwrap_or_default());
                api.delete(&name, params).await.map(drop)
            }
            Stored::Legacy(_) => Api::<legacy::PodIdentityAssociation>::all(client)
                .delete(&name, params)
                .await
                .map(drop),
        }
    }
}

fn invalid_record(obj: &Stored, e: crate::association::Invalid) -> Refused {
    refused(
        StatusCode::INTERNAL_SERVER_ERROR,
        "CCE.01500001",
        format!("association {} is not a valid record: {e}", obj.name()),
    )
}

/// `namespace/name` has an association already (`uid`).
fn exists(namespace: &str, name: &str, uid: &str) -> Refused {
    refused(
        StatusCode::CONFLICT,
        "CCE.01409001",
        format!(
            "{namespace}/{name} already has a pod identity association ({uid}); a service account has at most one"
        ),
    )
}

/// A read of an old object: its CRD being gone means there is none.
fn absent_is_none<T>(read: Result<Option<T>, kube::Error>) -> Result<Option<T>, Refused> {
    match read {
        Ok(found) => Ok(found),
        Err(e) if kube_client::is_absent(&e) => Ok(None),
        Err(e) => Err(kube_failed(e)),
    }
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `user` may not `verb` the associations (what the API server `said`, when it was asked).
fn forbidden(user: &str, verb: &str, said: Option<&str>) -> Refused {
    tracing::info!(%user, verb, "association API call refused by the API server");
    let said = said
        .map(|m| format!(": the API server said \"{m}\""))
        .unwrap_or_default();
    refused(
        StatusCode::FORBIDDEN,
        "CCE.01403004",
        format!(
            "{user} may not {verb} {PLURAL}.{GROUP}{said} (cluster RBAC decides; ask for a Role granting it, \
             docs/permissions.md)"
        ),
    )
}

fn not_found(id: &str) -> Refused {
    refused(
        StatusCode::NOT_FOUND,
        "CCE.01404003",
        format!("pod identity association {id} does not exist"),
    )
}

fn bad_body(e: serde_json::Error) -> Refused {
    refused(
        StatusCode::BAD_REQUEST,
        "CCE.01400004",
        format!("the request body is not a valid association request: {e}"),
    )
}

fn unavailable(e: review::ReviewError) -> Refused {
    tracing::warn!(error = %e, "association API cannot review a caller");
    refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "CCE.01503001",
        "the server cannot verify tokens right now (the Kubernetes API did not answer); retry shortly",
    )
}

/// What the API server said, for the caller: its refusal of an object (422) is the caller's
/// to fix; its refusal of the exchange's own read (403: its ClusterRole lacks get/list on the
/// associations) the cluster admin's; anything else is ours.
fn kube_failed(e: kube::Error) -> Refused {
    match e {
        kube::Error::Api(s) if s.is_invalid() => refused(StatusCode::BAD_REQUEST, "CCE.01400003", s.message),
        kube::Error::Api(s) if s.is_forbidden() => {
            tracing::warn!(error = %s.message, "association API: the API server refused the exchange's own read");
            refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "CCE.01500002",
                "the API server refused the exchange's own read of the associations: its ClusterRole \
                 lacks get and list on podidentityassociations (docs/permissions.md); the server's log has the cause",
            )
        }
        e => {
            tracing::warn!(error = %e, "association API: the Kubernetes API failed");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "CCE.01503002",
                "the Kubernetes API did not answer as expected; retry shortly (the server's log has the cause)",
            )
        }
    }
}
