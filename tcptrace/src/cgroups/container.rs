//! A container identity from a cgroup path's well-known shapes: what the
//! runtimes and systemd name the cgroups they create.
//!
//! The deepest component that has a known shape wins, so that a
//! runtime's own sub-cgroups (podman's `libpod-<id>.scope/container`, a
//! service's sub-cgroups) still name the container or the service.

/// What owns a cgroup, as far as its path tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Docker,
    /// containerd, through CRI (Kubernetes) or its own `cri-containerd-`.
    Containerd,
    Crio,
    Podman,
    /// A Kubernetes pod's own cgroup (the containers are below it).
    Pod,
    /// A systemd service (`<name>.service`).
    Service,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Docker => "docker",
            Kind::Containerd => "containerd",
            Kind::Crio => "crio",
            Kind::Podman => "podman",
            Kind::Pod => "pod",
            Kind::Service => "service",
        }
    }
}

/// The identity a path's shape gives, if any: the kind and its id (a
/// container id, a pod uid, or a service's unit name).
pub fn identify(path: &str) -> Option<(Kind, &str)> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    (0..parts.len())
        .rev()
        .find_map(|i| component(parts[i], i.checked_sub(1).map(|p| parts[p])))
}

/// `docker:0123456789ab…`, `pod:<uid>`, `nginx.service`: the container
/// identity as the JSON and the views show it; the path itself when its
/// shape is unknown.
pub fn label(path: &str) -> String {
    match identify(path) {
        Some((Kind::Service, unit)) => unit.to_string(),
        Some((kind, id)) => format!("{}:{id}", kind.name()),
        None => path.to_string(),
    }
}

/// One path component's shape; `parent` is the component above it.
fn component<'a>(part: &'a str, parent: Option<&str>) -> Option<(Kind, &'a str)> {
    // systemd's cgroup driver: `<runtime>-<id>.scope`.
    if let Some(scope) = part.strip_suffix(".scope") {
        for (prefix, kind) in [
            ("docker-", Kind::Docker),
            ("cri-containerd-", Kind::Containerd),
            ("crio-", Kind::Crio),
            ("libpod-", Kind::Podman),
        ] {
            if let Some(id) = scope.strip_prefix(prefix) {
                if is_container_id(id) {
                    return Some((kind, id));
                }
            }
        }
    }
    // cgroupfs driver: `/docker/<id>`, `/libpod_parent/libpod-<id>`, and a
    // bare id below a pod (`/kubepods/burstable/pod<uid>/<id>`).
    match parent {
        Some("docker") if is_container_id(part) => return Some((Kind::Docker, part)),
        Some(p) if pod_uid(p).is_some() && is_container_id(part) => {
            return Some((Kind::Containerd, part))
        }
        _ => {}
    }
    if let Some(id) = part.strip_prefix("libpod-") {
        if is_container_id(id) {
            return Some((Kind::Podman, id));
        }
    }
    if let Some(uid) = pod_uid(part) {
        return Some((Kind::Pod, uid));
    }
    if part.len() > ".service".len() && part.ends_with(".service") {
        return Some((Kind::Service, part));
    }
    None
}

/// A pod's uid from `kubepods-burstable-pod<uid>.slice` (systemd driver,
/// the uid's dashes written as underscores) or `pod<uid>` (cgroupfs).
fn pod_uid(part: &str) -> Option<&str> {
    let pod = part.strip_suffix(".slice").unwrap_or(part);
    let uid = &pod[pod.rfind("pod")? + 3..];
    let plausible = uid.len() >= 32
        && uid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    (plausible && (part.starts_with("kubepods") || part.starts_with("pod"))).then_some(uid)
}

/// Container ids are 64 hex digits.
fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";

    #[test]
    fn runtimes_under_systemd() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), "docker"),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                "containerd",
            ),
            (format!("/machine.slice/crio-{ID}.scope"), "crio"),
            (format!("/machine.slice/libpod-{ID}.scope"), "podman"),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                "podman",
            ),
        ];
        for (path, kind) in cases {
            assert_eq!(label(&path), format!("{kind}:{ID}"), "{path}");
        }
    }

    #[test]
    fn runtimes_under_cgroupfs() {
        assert_eq!(label(&format!("/docker/{ID}")), format!("docker:{ID}"));
        assert_eq!(
            label(&format!("/libpod_parent/libpod-{ID}")),
            format!("podman:{ID}")
        );
        let pod = "/kubepods/burstable/pod0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
        assert_eq!(label(pod), "pod:0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0");
        assert_eq!(label(&format!("{pod}/{ID}")), format!("containerd:{ID}"));
    }

    #[test]
    fn kubernetes_pods_under_systemd() {
        let pod = "/kubepods.slice/kubepods-burstable.slice/\
                   kubepods-burstable-pod0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0.slice";
        assert_eq!(label(pod), "pod:0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0");
        let container = format!("{pod}/cri-containerd-{ID}.scope");
        assert_eq!(label(&container), format!("containerd:{ID}"));
        assert_eq!(
            label(&format!("{pod}/crio-{ID}.scope")),
            format!("crio:{ID}")
        );
    }

    #[test]
    fn services_and_unknown_shapes() {
        assert_eq!(label("/system.slice/nginx.service"), "nginx.service");
        assert_eq!(label("/system.slice/nginx.service/worker"), "nginx.service");
        assert_eq!(
            label("/user.slice/user-0.slice/session-3.scope"),
            "/user.slice/user-0.slice/session-3.scope"
        );
        assert_eq!(label("/"), "/");
        // Near misses are not containers.
        assert_eq!(
            label("/system.slice/docker-abc.scope"),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(label("/.service"), "/.service");
        assert_eq!(identify("/docker"), None);
    }
}
