//! `migrate-associations`: each cluster-scoped association (`podidentity.io/v1alpha1`) becomes
//! its namespaced twin (`iam.podidentity.io/v1beta1`, in the service account's namespace,
//! named after it), with the same spec and record of its last change. Idempotent; a twin that
//! differs is reported and left alone; `--delete-old` deletes an old object only once its twin
//! exists and is equal, with a uid precondition.

use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::core::ResourceExt;

use super::crd::{PodIdentityAssociation, legacy};
use crate::kube_client::{self, ClusterError};

/// `migrate-associations`.
#[derive(clap::Args)]
pub struct Args {
    /// Say what would be done; write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Delete each old object once its namespaced twin exists and is equal.
    #[arg(long)]
    pub(crate) delete_old: bool,
}

impl Args {
    /// Runs the migration and prints one line per old object and a summary; the exit status.
    pub fn run(&self) -> u8 {
        let m = Migration {
            dry_run: self.dry_run,
            delete_old: self.delete_old,
        };
        let ran = tokio::runtime::Runtime::new()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(run(m)).map_err(|e| e.to_string()));
        match ran {
            Ok(report) => {
                for line in &report.lines {
                    println!("{line}");
                }
                println!("{}", report.summary(self.dry_run));
                u8::from(report.problems > 0)
            }
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        }
    }
}

/// What to do.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Migration {
    /// Say what would be done; write nothing.
    pub(crate) dry_run: bool,
    /// Delete each old object whose twin exists and is equal.
    pub(crate) delete_old: bool,
}

/// Why the migration could not run at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MigrateError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "the namespaced CRD podidentityassociations.iam.podidentity.io is not installed: apply the new CRD first \
         (`pod-identity-webhook crd | kubectl apply --server-side -f -`; Helm does not upgrade CRDs)"
    )]
    NoNewCrd,
    #[error(
        "cannot {what}: {source} (the migration needs get/list/create on both kinds of podidentityassociations, delete on the old ones with --delete-old, and pass on the agencies and roles they grant)"
    )]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// What the migration did, object by object.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// One line per old object.
    pub(crate) lines: Vec<String>,
    pub(crate) created: usize,
    pub(crate) already: usize,
    pub(crate) deleted: usize,
    /// Old objects left because their twin differs, or a write was refused.
    pub(crate) problems: usize,
}

impl Report {
    /// The closing line.
    pub(crate) fn summary(&self, dry_run: bool) -> String {
        let old = self.created + self.already + self.problems;
        let verb = if dry_run { "would be " } else { "" };
        if old == 0 {
            return "no cluster-scoped associations: nothing to migrate".to_owned();
        }
        format!(
            "{old} cluster-scoped associations: {} {verb}created, {} already migrated, {} old {verb}deleted, {} left with a problem{}",
            self.created,
            self.already,
            self.deleted,
            self.problems,
            if self.problems == 0 && self.created == 0 && self.deleted == 0 {
                " (nothing to change)"
            } else {
                ""
            }
        )
    }
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> MigrateError {
    let what = what.into();
    move |source| MigrateError::Api { what, source }
}

/// Runs the migration against the cluster of the kubeconfig (or in-cluster config).
pub(crate) async fn run(m: Migration) -> Result<Report, MigrateError> {
    let client = kube::Client::try_from(kube_client::config().await?).map_err(ClusterError::from)?;
    migrate(client, m).await
}

pub(crate) async fn migrate(client: kube::Client, m: Migration) -> Result<Report, MigrateError> {
    let mut report = Report::default();
    let new_all = Api::<PodIdentityAssociation>::all(client.clone());
    match new_all.list(&ListParams::default().limit(1)).await {
        Err(e) if kube_client::is_absent(&e) => return Err(MigrateError::NoNewCrd),
        other => drop(other.map_err(api("list the namespaced associations"))?),
    }
    let old_api = Api::<legacy::PodIdentityAssociation>::all(client.clone());
    let mut old = match old_api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) if kube_client::is_absent(&e) => {
            report.lines.push(format!(
                "the old CRD {} is not installed: nothing to migrate",
                legacy::NAME
            ));
            return Ok(report);
        }
        Err(e) => return Err(api("list the cluster-scoped associations")(e)),
    };
    old.sort_by_key(|o| o.name_any());
    for o in old {
        let name = o.name_any();
        let twin = match legacy::twin(&o, false) {
            Ok(twin) => twin,
            Err(e) => {
                report.problems += 1;
                report
                    .lines
                    .push(format!("{name}: not a valid association ({e}); left alone"));
                continue;
            }
        };
        let (ns, sa) = (twin.namespace().unwrap_or_default(), twin.name_any());
        let here = Api::<PodIdentityAssociation>::namespaced(client.clone(), &ns);
        let existing = here.get_opt(&sa).await.map_err(api(format!("read {ns}/{sa}")))?;
        match existing {
            Some(e) if e.spec == twin.spec => {
                report.already += 1;
                report
                    .lines
                    .push(format!("{name}: already migrated to {ns}/{sa}"));
            }
            Some(_) => {
                report.problems += 1;
                report.lines.push(format!(
                    "{name}: {ns}/{sa} already has a different namespaced association, which is in force; \
                     left both alone (make them agree or delete one)"
                ));
                continue;
            }
            None if m.dry_run => {
                report.created += 1;
                report.lines.push(format!("{name}: would create {ns}/{sa}"));
            }
            None => match here.create(&PostParams::default(), &twin).await {
                Ok(_) => {
                    report.created += 1;
                    report.lines.push(format!("{name}: created {ns}/{sa}"));
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {
                    report.problems += 1;
                    report.lines.push(format!(
                        "{name}: namespace {ns} does not exist, so the old object grants to whoever creates it; \
                         left alone (delete it, or create the namespace and run again)"
                    ));
                    continue;
                }
                Err(kube::Error::Api(s)) if s.is_forbidden() || s.is_invalid() => {
                    report.problems += 1;
                    report
                        .lines
                        .push(format!("{name}: the API server refused {ns}/{sa}: {}", s.message));
                    continue;
                }
                Err(e) => return Err(api(format!("create {ns}/{sa}"))(e)),
            },
        }
        if !m.delete_old {
            continue;
        }
        if m.dry_run {
            report.deleted += 1;
            report.lines.push(format!("{name}: would delete the old object"));
            continue;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: o.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match old_api.delete(&name, &params).await {
            Ok(_) => {
                report.deleted += 1;
                report.lines.push(format!("{name}: deleted the old object"));
            }
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {
                report.lines.push(format!(
                    "{name}: changed or deleted meanwhile; left for the next run"
                ));
            }
            Err(e) => return Err(api(format!("delete {name}"))(e)),
        }
    }
    Ok(report)
}
