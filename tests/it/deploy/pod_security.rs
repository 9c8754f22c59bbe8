//! The Pod Security checker (`common::pod_security`) catches each control's violation, so that
//! the overlays' and the chart's templates are held to their namespaces' levels by it.

use serde_json::{Value, json};

use crate::common::pod_security::*;

/// A pod template that meets restricted, to break one field at a time.
fn compliant() -> Value {
    json!({
        "metadata": {},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "i", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "s", "secret": {"secretName": "x"}}, {"name": "p", "projected": {"sources": []}}],
        }
    })
}

/// Every control, broken on its own, is caught at the level that lists it and not below.
#[test]
fn each_control_catches_its_violation() {
    assert!(violations(&compliant(), Level::Restricted).is_empty());
    let cases: [(&str, &str, Value, Level); 24] = [
        (
            "Host Namespaces",
            "/spec/hostNetwork",
            json!(true),
            Level::Baseline,
        ),
        ("Host Namespaces", "/spec/hostPID", json!(true), Level::Baseline),
        ("Host Namespaces", "/spec/hostIPC", json!(true), Level::Baseline),
        (
            "HostProcess",
            "/spec/securityContext/windowsOptions",
            json!({"hostProcess": true}),
            Level::Baseline,
        ),
        (
            "Privileged Containers",
            "/spec/containers/0/securityContext/privileged",
            json!(true),
            Level::Baseline,
        ),
        (
            "Capabilities",
            "/spec/containers/0/securityContext/capabilities/add",
            json!(["NET_ADMIN"]),
            Level::Baseline,
        ),
        (
            "HostPath Volumes",
            "/spec/volumes/0",
            json!({"name": "h", "hostPath": {"path": "/"}}),
            Level::Baseline,
        ),
        (
            "Host Ports",
            "/spec/containers/0/ports",
            json!([{"containerPort": 80, "hostPort": 80}]),
            Level::Baseline,
        ),
        (
            "Host Probes / Lifecycle Hooks",
            "/spec/containers/0/readinessProbe",
            json!({"httpGet": {"host": "127.0.0.1", "port": 1}}),
            Level::Baseline,
        ),
        (
            "Host Probes / Lifecycle Hooks",
            "/spec/containers/0/lifecycle",
            json!({"preStop": {"tcpSocket": {"host": "10.0.0.1", "port": 1}}}),
            Level::Baseline,
        ),
        (
            "AppArmor",
            "/spec/containers/0/securityContext/appArmorProfile",
            json!({"type": "Unconfined"}),
            Level::Baseline,
        ),
        (
            "AppArmor",
            "/metadata/annotations",
            json!({"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}),
            Level::Baseline,
        ),
        (
            "SELinux",
            "/spec/securityContext/seLinuxOptions",
            json!({"type": "spc_t"}),
            Level::Baseline,
        ),
        (
            "SELinux",
            "/spec/containers/0/securityContext/seLinuxOptions",
            json!({"user": "system_u"}),
            Level::Baseline,
        ),
        (
            "/proc Mount Type",
            "/spec/containers/0/securityContext/procMount",
            json!("Unmasked"),
            Level::Baseline,
        ),
        (
            "Seccomp",
            "/spec/securityContext/seccompProfile",
            json!({"type": "Unconfined"}),
            Level::Baseline,
        ),
        (
            "Sysctls",
            "/spec/securityContext/sysctls",
            json!([{"name": "kernel.msgmax", "value": "1"}]),
            Level::Baseline,
        ),
        (
            "Volume Types",
            "/spec/volumes/0",
            json!({"name": "n", "nfs": {"server": "s", "path": "/"}}),
            Level::Restricted,
        ),
        (
            "Privilege Escalation",
            "/spec/containers/0/securityContext/allowPrivilegeEscalation",
            json!(true),
            Level::Restricted,
        ),
        (
            "Running as Non-root",
            "/spec/securityContext/runAsNonRoot",
            json!(false),
            Level::Restricted,
        ),
        (
            "Running as Non-root user",
            "/spec/containers/0/securityContext/runAsUser",
            json!(0),
            Level::Restricted,
        ),
        (
            "Seccomp",
            "/spec/securityContext/seccompProfile",
            json!({"type": ""}),
            Level::Restricted,
        ),
        (
            "Capabilities",
            "/spec/containers/0/securityContext/capabilities",
            json!({"drop": ["NET_RAW"]}),
            Level::Restricted,
        ),
        (
            "Capabilities",
            "/spec/containers/0/securityContext/capabilities",
            json!({"drop": ["ALL"], "add": ["CHOWN"]}),
            Level::Restricted,
        ),
    ];
    for (control, pointer, value, level) in cases {
        let mut pod = compliant();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = pod.pointer_mut(parent).unwrap_or_else(|| panic!("{parent}"));
        match target {
            Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
            other => other[key] = value,
        }
        let found = violations(&pod, level);
        assert!(
            found.iter().any(|f| f.starts_with(&format!("{control}:"))),
            "{control} via {pointer} not caught at {level:?}: {found:?}"
        );
        if level == Level::Restricted {
            assert!(
                violations(&pod, Level::Baseline).is_empty(),
                "{control} is a restricted control only"
            );
        }
        assert!(violations(&pod, Level::Privileged).is_empty());
    }
    // Container-level settings stand in for missing pod-level ones, and the reverse.
    let mut pod = compliant();
    pod["spec"]["securityContext"] = json!({});
    pod["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = json!(true);
    pod["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
        json!({"type": "Localhost", "localhostProfile": "p"});
    assert!(violations(&pod, Level::Restricted).is_empty());
    // On the host network a declared container port is a host port.
    let mut pod = compliant();
    pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": 2704}]);
    assert!(violations(&pod, Level::Baseline).is_empty());
    pod["spec"]["hostNetwork"] = json!(true);
    assert!(
        violations(&pod, Level::Baseline)
            .contains(&"Host Ports: containers[c].ports hostPort 2704".to_owned())
    );
}
