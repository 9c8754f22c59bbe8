//! The Pod Security Standards (baseline and restricted, as the Kubernetes documentation lists
//! them) as a checker of pod templates: what Pod Security admission would reject.

use serde_json::Value;

/// A namespace's `pod-security.kubernetes.io/enforce` level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(label: Option<&str>) -> Self {
        match label {
            Some("restricted") => Level::Restricted,
            Some("baseline") => Level::Baseline,
            // Unlabelled namespaces get the cluster's default, privileged unless configured.
            _ => Level::Privileged,
        }
    }
}

/// Capabilities baseline lets a container add (the container runtime's default set).
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls baseline allows (namespaced and safe).
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const SELINUX_TYPES: [&str; 5] = [
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Volume types restricted allows.
const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Every container of a pod spec with its path.
fn containers(spec: &Value) -> Vec<(String, &Value)> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| {
            spec[*list]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |c| (format!("{list}[{}]", c["name"].as_str().unwrap_or("?")), c))
        })
        .collect()
}

fn is_true(v: &Value) -> bool {
    v.as_bool() == Some(true)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The violations of `level` by a pod template (`metadata` and `spec`), each as
/// `"<control>: <field>"`. Empty when the pod would be admitted.
pub fn violations(template: &Value, level: Level) -> Vec<String> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let spec = &template["spec"];
    let psc = &spec["securityContext"];
    let cs = containers(spec);
    let mut v = |control: &str, field: String| out.push(format!("{control}: {field}"));

    // --- baseline ---
    if is_true(&psc["windowsOptions"]["hostProcess"]) {
        v(
            "HostProcess",
            "spec.securityContext.windowsOptions.hostProcess".into(),
        );
    }
    for ns in ["hostNetwork", "hostPID", "hostIPC"] {
        if is_true(&spec[ns]) {
            v("Host Namespaces", format!("spec.{ns}"));
        }
    }
    for (path, c) in &cs {
        let sc = &c["securityContext"];
        if is_true(&sc["windowsOptions"]["hostProcess"]) {
            v(
                "HostProcess",
                format!("{path}.securityContext.windowsOptions.hostProcess"),
            );
        }
        if is_true(&sc["privileged"]) {
            v(
                "Privileged Containers",
                format!("{path}.securityContext.privileged"),
            );
        }
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            if !BASELINE_CAPABILITIES.contains(&text(cap)) {
                v(
                    "Capabilities",
                    format!("{path}.securityContext.capabilities.add {}", text(cap)),
                );
            }
        }
        for port in c["ports"].as_array().into_iter().flatten() {
            // On the host network the API server defaults hostPort to containerPort.
            let host_port = port["hostPort"].as_u64().unwrap_or_else(|| {
                if is_true(&spec["hostNetwork"]) {
                    port["containerPort"].as_u64().unwrap_or(0)
                } else {
                    0
                }
            });
            if host_port != 0 {
                v("Host Ports", format!("{path}.ports hostPort {host_port}"));
            }
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            for action in ["httpGet", "tcpSocket"] {
                if !text(&c[probe][action]["host"]).is_empty() {
                    v(
                        "Host Probes / Lifecycle Hooks",
                        format!("{path}.{probe}.{action}.host"),
                    );
                }
            }
        }
        for hook in ["postStart", "preStop"] {
            for action in ["httpGet", "tcpSocket"] {
                if !text(&c["lifecycle"][hook][action]["host"]).is_empty() {
                    v(
                        "Host Probes / Lifecycle Hooks",
                        format!("{path}.lifecycle.{hook}.{action}.host"),
                    );
                }
            }
        }
        if !matches!(
            text(&sc["appArmorProfile"]["type"]),
            "" | "RuntimeDefault" | "Localhost"
        ) {
            v("AppArmor", format!("{path}.securityContext.appArmorProfile.type"));
        }
        if !SELINUX_TYPES.contains(&text(&sc["seLinuxOptions"]["type"])) {
            v("SELinux", format!("{path}.securityContext.seLinuxOptions.type"));
        }
        for f in ["user", "role"] {
            if !text(&sc["seLinuxOptions"][f]).is_empty() {
                v("SELinux", format!("{path}.securityContext.seLinuxOptions.{f}"));
            }
        }
        if !matches!(text(&sc["procMount"]), "" | "Default") {
            v("/proc Mount Type", format!("{path}.securityContext.procMount"));
        }
        if text(&sc["seccompProfile"]["type"]) == "Unconfined" {
            v("Seccomp", format!("{path}.securityContext.seccompProfile.type"));
        }
    }
    for vol in spec["volumes"].as_array().into_iter().flatten() {
        if vol.get("hostPath").is_some() {
            v(
                "HostPath Volumes",
                format!("spec.volumes[{}].hostPath", text(&vol["name"])),
            );
        }
    }
    if !matches!(
        text(&psc["appArmorProfile"]["type"]),
        "" | "RuntimeDefault" | "Localhost"
    ) {
        v("AppArmor", "spec.securityContext.appArmorProfile.type".into());
    }
    for (key, value) in template["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && text(value) != "runtime/default"
            && !text(value).starts_with("localhost/")
        {
            v("AppArmor", format!("metadata.annotations[{key}]"));
        }
    }
    if !SELINUX_TYPES.contains(&text(&psc["seLinuxOptions"]["type"])) {
        v("SELinux", "spec.securityContext.seLinuxOptions.type".into());
    }
    for f in ["user", "role"] {
        if !text(&psc["seLinuxOptions"][f]).is_empty() {
            v("SELinux", format!("spec.securityContext.seLinuxOptions.{f}"));
        }
    }
    if text(&psc["seccompProfile"]["type"]) == "Unconfined" {
        v("Seccomp", "spec.securityContext.seccompProfile.type".into());
    }
    for s in psc["sysctls"].as_array().into_iter().flatten() {
        if !SAFE_SYSCTLS.contains(&text(&s["name"])) {
            v(
                "Sysctls",
                format!("spec.securityContext.sysctls {}", text(&s["name"])),
            );
        }
    }
    if level == Level::Baseline {
        return out;
    }

    // --- restricted ---
    for vol in spec["volumes"].as_array().into_iter().flatten() {
        let kind = vol
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .find(|k| *k != "name");
        if !kind.is_some_and(|k| RESTRICTED_VOLUMES.contains(&k)) {
            v(
                "Volume Types",
                format!("spec.volumes[{}] {}", text(&vol["name"]), kind.unwrap_or("?")),
            );
        }
    }
    let pod_non_root = is_true(&psc["runAsNonRoot"]);
    let pod_seccomp = matches!(
        text(&psc["seccompProfile"]["type"]),
        "RuntimeDefault" | "Localhost"
    );
    if psc["runAsUser"].as_i64() == Some(0) {
        v(
            "Running as Non-root user",
            "spec.securityContext.runAsUser".into(),
        );
    }
    if psc["runAsNonRoot"].as_bool() == Some(false) {
        v("Running as Non-root", "spec.securityContext.runAsNonRoot".into());
    }
    for (path, c) in &cs {
        let sc = &c["securityContext"];
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            v(
                "Privilege Escalation",
                format!("{path}.securityContext.allowPrivilegeEscalation"),
            );
        }
        let non_root = match sc["runAsNonRoot"].as_bool() {
            Some(b) => b,
            None => pod_non_root,
        };
        if !non_root {
            v(
                "Running as Non-root",
                format!("{path}.securityContext.runAsNonRoot"),
            );
        }
        if sc["runAsUser"].as_i64() == Some(0) {
            v(
                "Running as Non-root user",
                format!("{path}.securityContext.runAsUser"),
            );
        }
        let seccomp = match text(&sc["seccompProfile"]["type"]) {
            "" => pod_seccomp,
            t => matches!(t, "RuntimeDefault" | "Localhost"),
        };
        if !seccomp {
            v("Seccomp", format!("{path}.securityContext.seccompProfile.type"));
        }
        let caps = &sc["capabilities"];
        if !caps["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| text(d) == "ALL")
        {
            v(
                "Capabilities",
                format!("{path}.securityContext.capabilities.drop"),
            );
        }
        for cap in caps["add"].as_array().into_iter().flatten() {
            if text(cap) != "NET_BIND_SERVICE" {
                v(
                    "Capabilities",
                    format!("{path}.securityContext.capabilities.add {}", text(cap)),
                );
            }
        }
    }
    out
}
