//! Moving from the cluster-scoped associations to the namespaced ones on a real API server:
//! `migrate-associations` (the binary, with a kubeconfig) converts, keeps what it cannot
//! convert safely, and changes no pod's answer; a namespace's deletion takes its namespaced
//! associations with it, the old kind's survive it.

use serde_json::Value;

use crate::common::apiserver::{ApiServer, association_yaml, legacy_association_yaml};

/// `pod-identity-webhook <args>` as the admin: exit status and output.
fn run(api: &ApiServer, args: &[&str]) -> (i32, String) {
    api.run_as("admin-token", args)
}

/// Every association of both kinds as `kind namespace/serviceAccount agency`, sorted.
fn everything(api: &ApiServer) -> Vec<String> {
    let mut out = Vec::new();
    for (resource, kind) in [
        ("podidentityassociations.iam.podidentity.io", "new"),
        ("podidentityassociations.podidentity.io", "old"),
    ] {
        let (ok, text, err) = api.kubectl(&["get", resource, "-A", "-o", "json"], None);
        assert!(ok, "{err}");
        let list: Value = serde_json::from_str(&text).unwrap();
        for o in list["items"].as_array().unwrap() {
            let ns = o["metadata"]["namespace"]
                .as_str()
                .or(o["spec"]["namespace"].as_str())
                .unwrap();
            out.push(format!(
                "{kind} {ns}/{} {}",
                o["spec"]["serviceAccount"].as_str().unwrap(),
                o["spec"]["agencyName"].as_str().unwrap()
            ));
        }
    }
    out.sort();
    out
}

/// What `explain` says a pod of `ns/app` is granted: the agency of the line naming the
/// association, and the exit status.
fn granted(api: &ApiServer, target: &str) -> (i32, Option<String>) {
    let (code, out) = run(api, &["explain", target]);
    let agency = out.lines().find_map(|l| {
        l.split_once(" grants ")
            .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_owned())
    });
    (code, agency)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_converts_what_it_safely_can_and_no_pod_notices() {
    // Its own API server: the migration reads every association of the cluster.
    let Some(api) = ApiServer::start_own("migrate", &[]) else {
        return;
    };
    api.install_crd();
    let on = [("podidentity.io/injection", "enabled")];
    let (a, b, c) = (
        api.namespace("mig-a", &on).await,
        api.namespace("mig-b", &on).await,
        api.namespace("mig-c", &on).await,
    );
    // Old objects: a plain one, one already migrated, one whose twin differs, one for a
    // namespace that does not exist.
    api.apply(&legacy_association_yaml(&a, "app", "agency-a"));
    api.apply(&legacy_association_yaml(&b, "app", "agency-b"));
    api.apply(&association_yaml(&b, "app", "agency-b"));
    api.apply(&legacy_association_yaml(&c, "app", "agency-c-old"));
    api.apply(&association_yaml(&c, "app", "agency-c-new"));
    api.apply(&legacy_association_yaml("mig-gone", "app", "agency-gone"));
    for ns in [&a, &b, &c] {
        api.pod(ns, "early", "app", "node-a").await;
    }
    let answers = |api: &ApiServer| [&a, &b, &c].map(|ns| granted(api, &format!("{ns}/early")));
    let before = answers(&api);
    assert_eq!(
        before.clone().map(|(_, agency)| agency),
        [
            Some("agency-a".into()),
            Some("agency-b".into()),
            Some("agency-c-new".into())
        ],
        "the namespaced association wins over the old one: {before:?}"
    );
    let start = everything(&api);

    // A dry run says what it would do and writes nothing; problems make the exit status 1.
    let (code, out) = run(&api, &["migrate-associations", "--dry-run", "--delete-old"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{a}.app: would create {a}/app")), "{out}");
    assert!(
        out.contains(&format!("{b}.app: already migrated to {b}/app")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{c}.app: {c}/app already has a different namespaced association"
        )),
        "{out}"
    );
    assert!(out.contains("mig-gone.app: would create mig-gone/app"), "{out}");
    assert_eq!(everything(&api), start, "a dry run writes nothing");

    let (code, out) = run(&api, &["migrate-associations", "--delete-old"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{a}.app: created {a}/app")), "{out}");
    assert!(
        out.contains("mig-gone.app: namespace mig-gone does not exist"),
        "{out}"
    );
    assert!(
        out.contains("4 cluster-scoped associations: 1 created, 1 already migrated, 2 old deleted, 2 left with a problem"),
        "{out}"
    );
    let mut expected = vec![
        format!("new {a}/app agency-a"),
        format!("new {b}/app agency-b"),
        format!("new {c}/app agency-c-new"),
        format!("old {c}/app agency-c-old"),
        "old mig-gone/app agency-gone".to_owned(),
    ];
    expected.sort();
    assert_eq!(
        everything(&api),
        expected,
        "converted, the conflict and the orphan kept"
    );
    assert_eq!(answers(&api), before, "every pod is granted what it was");

    // Again: nothing new to do, the same problems.
    let (code, out) = run(&api, &["migrate-associations", "--delete-old"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("2 cluster-scoped associations: 0 created, 0 already migrated, 0 old deleted, 2 left with a problem"), "{out}");
    assert_eq!(everything(&api), expected);

    // Once the conflict is settled and the orphan deleted, the run is clean, then a no-op.
    api.apply(&legacy_association_yaml(&c, "app", "agency-c-new"));
    let (ok, _, err) = api.kubectl(
        &["delete", "podidentityassociations.podidentity.io", "mig-gone.app"],
        None,
    );
    assert!(ok, "{err}");
    let (code, out) = run(&api, &["migrate-associations", "--delete-old"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{c}.app: already migrated to {c}/app")),
        "{out}"
    );
    let (code, out) = run(&api, &["migrate-associations", "--delete-old"]);
    assert_eq!(
        (code, out.trim()),
        (0, "no cluster-scoped associations: nothing to migrate")
    );
    assert_eq!(answers(&api), before);
}

/// The namespace controller deletes what discovery lists as namespaced: the new kind, not the
/// old. After the namespace is gone (its contents deleted and the namespace finalized, as the
/// controller does), recreating it grants nothing; the old kind's object is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_takes_its_associations_along() {
    let Some(api) = ApiServer::shared() else { return };
    api.install_crd();
    let (ok, namespaced, err) = api.kubectl(&["api-resources", "--namespaced=true", "-o", "name"], None);
    assert!(ok, "{err}");
    assert!(
        namespaced
            .lines()
            .any(|l| l == "podidentityassociations.iam.podidentity.io"),
        "{namespaced}"
    );
    assert!(
        !namespaced
            .lines()
            .any(|l| l == "podidentityassociations.podidentity.io"),
        "{namespaced}"
    );

    let ns = api
        .namespace("doomed", &[("podidentity.io/injection", "enabled")])
        .await;
    api.apply(&association_yaml(&ns, "app", "agency-new"));
    api.apply(&legacy_association_yaml(&ns, "old", "agency-old"));
    let (ok, _, err) = api.kubectl(&["delete", "namespace", &ns, "--wait=false"], None);
    assert!(ok, "{err}");
    // Terminating: the API server admits no new association there.
    let err = {
        let (ok, out, err) = api.kubectl(
            &["create", "-f", "-"],
            Some(&association_yaml(&ns, "late", "agency-late")),
        );
        assert!(!ok, "{out}");
        err
    };
    assert!(
        err.contains("being terminated") || err.contains("NotFound"),
        "{err}"
    );
    // What the namespace controller does with what discovery lists as namespaced, then finalize.
    let (ok, _, err) = api.kubectl(
        &[
            "delete",
            "podidentityassociations.iam.podidentity.io",
            "--all",
            "-n",
            &ns,
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, text, err) = api.kubectl(&["get", "namespace", &ns, "-o", "json"], None);
    assert!(ok, "{err}");
    let mut namespace: Value = serde_json::from_str(&text).unwrap();
    namespace["spec"]["finalizers"] = Value::Array(vec![]);
    let (ok, out, err) = api.kubectl(
        &[
            "replace",
            "--raw",
            &format!("/api/v1/namespaces/{ns}/finalize"),
            "-f",
            "-",
        ],
        Some(&namespace.to_string()),
    );
    assert!(ok, "{out}{err}");
    let (ok, _, _) = api.kubectl(&["get", "namespace", &ns], None);
    assert!(!ok, "the namespace is gone");

    api.create_namespace(&ns, &[("podidentity.io/injection", "enabled")])
        .await;
    api.pod(&ns, "reborn", "app", "node-a").await;
    let (code, agency) = granted(api, &format!("{ns}/reborn"));
    assert_eq!(
        (code, agency),
        (1, None),
        "the recreated namespace inherits nothing"
    );
    let (ok, agency, err) = api.kubectl(
        &[
            "get",
            "podidentityassociations.podidentity.io",
            &format!("{ns}.old"),
            "-o",
            "jsonpath={.spec.agencyName}",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(
        agency, "agency-old",
        "the old kind outlives its namespace: migrate it"
    );
}
