//! Which cgroup owns a socket.
//!
//! The probe records the owner's cgroup v2 id (`bpf_get_current_cgroup_id`
//! in the owner's own context). In the v2 hierarchy a cgroup's id is the
//! inode number of its directory, so userspace names ids by walking the
//! hierarchy (`Hierarchy`, found from /proc/self/mountinfo: `/sys/fs/cgroup`
//! on cgroup v2 hosts, `/sys/fs/cgroup/unified` on hybrid ones). `Names`
//! caches what the walks found, walks again when an unknown id appears (at
//! most every `REWALK_INTERVAL`), and keeps the path of a cgroup that has
//! gone: a short-lived container's sockets outlive it in TIME_WAIT.
//! `container` turns a path into a container or service identity.
pub mod container;

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::sockets::Owner;

/// Least time between two walks of the hierarchy for unknown ids: a walk
/// of a host with thousands of containers costs milliseconds of the event
/// loop, and ids only appear as fast as cgroups are created.
pub const REWALK_INTERVAL: Duration = Duration::from_millis(100);

/// A cgroup by name: its path in the v2 hierarchy (`/` is the root) and
/// the container identity the path gives (`container::label`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub path: Box<str>,
    pub container: Box<str>,
}

impl Cgroup {
    pub fn new(path: &str) -> Self {
        Cgroup {
            path: path.into(),
            container: container::label(path).into(),
        }
    }
}

/// The cgroup v2 hierarchy's mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted, as mountinfo says.
    pub mount: PathBuf,
    /// Where tcptrace reads it: `mount`, or through /proc/1/root when this
    /// mount namespace lacks it.
    access: PathBuf,
}

impl Hierarchy {
    /// The cgroup2 mount of this mount namespace, from /proc/self/mountinfo;
    /// else that of init or of the nearest ancestor process that has one,
    /// read through its /proc/PID/root (`ip netns exec` runs its command in
    /// a mount namespace with a fresh /sys, without cgroups). `None` on a
    /// host with cgroup v1 only.
    pub fn find() -> Option<Hierarchy> {
        let own = fs::read_to_string("/proc/self/mountinfo").ok()?;
        if let Some(found) = Self::from_mountinfo(&own) {
            return Some(found);
        }
        let mut pids = vec![1];
        let mut pid = parent_of("self");
        while let Some(p) = pid.filter(|&p| p > 1) {
            pids.push(p);
            pid = parent_of(&p.to_string());
        }
        pids.into_iter().find_map(|pid| {
            let text = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
            let mut found = Self::from_mountinfo(&text)?;
            let inside = found.mount.strip_prefix("/").ok()?.to_path_buf();
            found.access = PathBuf::from(format!("/proc/{pid}/root")).join(inside);
            found.access.join("cgroup.procs").exists().then_some(found)
        })
    }

    /// The first cgroup2 mount of the hierarchy's root (a container may
    /// see a sub-tree mounted elsewhere).
    pub fn from_mountinfo(text: &str) -> Option<Hierarchy> {
        text.lines().find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            if fs.split(' ').next()? != "cgroup2" {
                return None;
            }
            let fields: Vec<&str> = mount.split(' ').collect();
            let (root, point) = (fields.get(3)?, fields.get(4)?);
            (*root == "/").then(|| {
                let mount = PathBuf::from(unescape_mount_path(point));
                Hierarchy {
                    access: mount.clone(),
                    mount,
                }
            })
        })
    }

    /// A cgroup's path in the hierarchy from what a user typed: a path in
    /// the hierarchy (`/system.slice/nginx.service`, as /proc/PID/cgroup
    /// shows it) or the directory under the mount.
    pub fn cgroup_path(&self, typed: &str) -> String {
        let typed_path = Path::new(typed);
        let inside = typed_path
            .strip_prefix(&self.mount)
            .or_else(|_| typed_path.strip_prefix(&self.access))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| typed.to_string());
        let parts: Vec<&str> = inside.split('/').filter(|p| !p.is_empty()).collect();
        format!("/{}", parts.join("/"))
    }

    fn dir(&self, path: &str) -> PathBuf {
        self.access.join(path.trim_start_matches('/'))
    }

    /// The id of the cgroup at `path` (its directory's inode).
    pub fn id_of(&self, path: &str) -> Result<u64> {
        let dir = self.dir(path);
        let meta = fs::metadata(&dir)
            .with_context(|| format!("no cgroup {path} under {}", self.mount.display()))?;
        if !meta.is_dir() || !dir.join("cgroup.procs").exists() {
            bail!("{} is not a cgroup", dir.display());
        }
        Ok(meta.ino())
    }

    /// Every cgroup in the hierarchy: its id and path.
    pub fn walk(&self, found: &mut impl FnMut(u64, &str)) {
        self.walk_from(&self.access, "", found);
    }

    fn walk_from(&self, dir: &Path, path: &str, found: &mut impl FnMut(u64, &str)) {
        let Ok(meta) = fs::metadata(dir) else {
            return; // removed while walking
        };
        found(meta.ino(), if path.is_empty() { "/" } else { path });
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name();
                let child = format!("{path}/{}", name.to_string_lossy());
                self.walk_from(&entry.path(), &child, found);
            }
        }
    }
}

/// A process's parent, from /proc/PID/stat (after the command's closing
/// parenthesis: state, then ppid).
fn parent_of(pid: &str) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// mountinfo writes a space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A process's cgroup v2 path, from /proc/PID/cgroup's `0::` line.
pub fn path_of_pid(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end_matches(" (deleted)").to_string())
}

/// A process's cgroup id (0 if it has gone or there is no v2 hierarchy).
pub fn id_of_pid(hierarchy: Option<&Hierarchy>, pid: u32) -> u64 {
    hierarchy
        .zip(path_of_pid(pid))
        .and_then(|(h, path)| h.id_of(&path).ok())
        .unwrap_or(0)
}

/// The id of `path`'s ancestor at `level` (the root is 0), as the probe's
/// `bpf_get_current_ancestor_cgroup_id` gives it for the current task.
pub fn ancestor_id(hierarchy: &Hierarchy, path: &str, level: u32) -> Option<u64> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let above = parts.get(..level as usize)?;
    hierarchy.id_of(&format!("/{}", above.join("/"))).ok()
}

/// What /proc/PID/cgroup gives on a cgroup v1-only host: the
/// `name=systemd` hierarchy's path (the one that names services and
/// containers), else the first line's.
pub fn v1_path_of_pid(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path_of = |l: &str| l.splitn(3, ':').nth(2).map(str::to_string);
    text.lines()
        .find(|l| l.contains(":name=systemd:"))
        .and_then(path_of)
        .or_else(|| text.lines().next().and_then(path_of))
}

/// Cgroup ids to names, cached; see the module's comment.
pub struct Names {
    hierarchy: Option<Hierarchy>,
    known: HashMap<u64, Cgroup>,
    /// Ids a walk after their event did not find: gone for good (ids are
    /// never reused), so they trigger no more walks.
    unknown: HashSet<u64>,
    last_walk: Option<Instant>,
    walks: u64,
}

impl Names {
    /// Walks the hierarchy once; `None` (a v1-only host) names nothing.
    pub fn new(hierarchy: Option<Hierarchy>) -> Self {
        let mut names = Names {
            hierarchy,
            known: HashMap::new(),
            unknown: HashSet::new(),
            last_walk: None,
            walks: 0,
        };
        names.walk();
        names
    }

    /// No names yet, and no hierarchy to walk: a capture's names arrive
    /// with it (`learn`).
    pub fn empty() -> Self {
        Names::new(None)
    }

    /// Names a capture gives (a later name of an id replaces an earlier).
    pub fn learn(&mut self, table: &[(u64, String)]) {
        for (id, path) in table {
            self.known.insert(*id, Cgroup::new(path));
        }
    }

    pub fn hierarchy(&self) -> Option<&Hierarchy> {
        self.hierarchy.as_ref()
    }

    fn walk(&mut self) {
        let Some(hierarchy) = &self.hierarchy else {
            return;
        };
        let known = &mut self.known;
        hierarchy.walk(&mut |id, path| {
            if known.get(&id).is_none_or(|c| *c.path != *path) {
                known.insert(id, Cgroup::new(path));
            }
        });
        self.last_walk = Some(Instant::now());
        self.walks += 1;
    }

    /// The cgroup of `id`, walking the hierarchy again if it is new (at
    /// most every `REWALK_INTERVAL`). 0 is "no cgroup".
    #[inline]
    pub fn resolve(&mut self, id: u64) -> Option<&Cgroup> {
        // Per event: a known id costs two lookups (the borrow checker does
        // not let a `get` hit return early before the walk's mutation).
        if self.known.contains_key(&id) {
            return self.known.get(&id);
        }
        let due = self
            .last_walk
            .is_none_or(|at| at.elapsed() >= REWALK_INTERVAL);
        if id == 0 || !due || self.hierarchy.is_none() || self.unknown.contains(&id) {
            return None;
        }
        self.walk();
        if !self.known.contains_key(&id) {
            self.unknown.insert(id);
        }
        self.known.get(&id)
    }

    /// The cgroup of `id` if already known (no walk).
    pub fn get(&self, id: u64) -> Option<&Cgroup> {
        self.known.get(&id)
    }

    /// Whether `path` is `ancestor` or below it.
    pub fn is_within(path: &str, ancestor: &str) -> bool {
        let ancestor = ancestor.trim_end_matches('/');
        ancestor.is_empty()
            || path == ancestor
            || path
                .strip_prefix(ancestor)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    pub fn walks(&self) -> u64 {
        self.walks
    }
}

/// `--cgroup PATH`, checked against the hierarchy: what the probe's filter
/// needs (the id and level of the subtree's root) and its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupFilter {
    pub path: String,
    /// None when the path was only checked against a capture's table.
    pub id: Option<u64>,
    pub level: u32,
}

impl CgroupFilter {
    /// A filter for a live probe: the cgroup must exist now.
    pub fn live(typed: &str) -> Result<Self> {
        let Some(hierarchy) = Hierarchy::find() else {
            bail!(
                "--cgroup needs the cgroup v2 hierarchy, which is not mounted here \
                 (a cgroup v1-only host; cgroup v2 came with Linux 4.5)"
            );
        };
        let path = hierarchy.cgroup_path(typed);
        let id = hierarchy
            .id_of(&path)
            .with_context(|| format!("--cgroup {typed}"))?;
        Ok(CgroupFilter {
            level: level_of(&path),
            path,
            id: Some(id),
        })
    }

    /// A filter for reading a capture: matched by path, below or at it.
    pub fn by_path(typed: &str) -> Self {
        let parts: Vec<&str> = typed.split('/').filter(|p| !p.is_empty()).collect();
        let path = format!("/{}", parts.join("/"));
        CgroupFilter {
            level: level_of(&path),
            path,
            id: None,
        }
    }

    pub fn contains(&self, path: &str) -> bool {
        Names::is_within(path, &self.path)
    }
}

/// The owners' cgroups of the socket views (stuck, census), which find
/// owners in procfs as well as in events: named by id, or on a v1-only host
/// by what /proc/PID/cgroup says; and `--cgroup`, applied to them.
pub struct OwnerCgroups {
    names: Names,
    filter: Option<CgroupFilter>,
}

impl OwnerCgroups {
    pub fn new(filter: Option<CgroupFilter>) -> Self {
        let hierarchy = Hierarchy::find();
        if hierarchy.is_none() {
            crate::error::note!(
                "tcptrace: warning: no cgroup v2 hierarchy is mounted (a cgroup v1-only \
                 host): owners' cgroups are /proc/PID/cgroup's name=systemd paths, and \
                 events carry none"
            );
        }
        OwnerCgroups {
            names: Names::new(hierarchy),
            filter,
        }
    }

    /// The named cgroup of an owner.
    pub fn of(&mut self, owner: Option<&Owner>) -> Option<Cgroup> {
        let owner = owner?;
        if self.names.hierarchy().is_none() {
            return v1_path_of_pid(owner.pid).map(|p| Cgroup::new(&p));
        }
        self.names.resolve(owner.cgroup).cloned()
    }

    /// Names the probe or a capture gave.
    pub fn learn(&mut self, table: &[(u64, String)]) {
        self.names.learn(table);
    }

    /// Whether `--cgroup` was given.
    pub fn filters(&self) -> bool {
        self.filter.is_some()
    }

    /// Whether an owner's cgroup passes `--cgroup` (no filter: all do).
    pub fn passes(&self, cgroup: Option<&Cgroup>) -> bool {
        match &self.filter {
            None => true,
            Some(filter) => cgroup.is_some_and(|c| filter.contains(&c.path)),
        }
    }
}

/// A cgroup's level in the hierarchy: the root is 0.
pub fn level_of(path: &str) -> u32 {
    path.split('/').filter(|p| !p.is_empty()).count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount_on_hybrid_and_unified_hosts() {
        let hybrid = "\
29 1 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
30 29 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 29 0:28 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            Hierarchy::from_mountinfo(hybrid).unwrap().mount,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Hierarchy::from_mountinfo(unified).unwrap().mount,
            PathBuf::from("/sys/fs/cgroup")
        );
        // A sub-tree bind-mounted in a container is not the hierarchy's root.
        let sub = "40 30 0:27 /docker/abc /mnt\\040x rw - cgroup2 cgroup2 rw\n\
                   41 30 0:27 / /mnt/cg\\040v2 rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Hierarchy::from_mountinfo(sub).unwrap().mount,
            PathBuf::from("/mnt/cg v2")
        );
        let v1_only = "31 29 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(Hierarchy::from_mountinfo(v1_only), None);
    }

    #[test]
    fn typed_paths_are_paths_in_the_hierarchy() {
        let h = Hierarchy {
            mount: PathBuf::from("/sys/fs/cgroup/unified"),
            access: PathBuf::from("/sys/fs/cgroup/unified"),
        };
        assert_eq!(
            h.cgroup_path("/system.slice/a.service"),
            "/system.slice/a.service"
        );
        assert_eq!(
            h.cgroup_path("system.slice/a.service/"),
            "/system.slice/a.service"
        );
        assert_eq!(h.cgroup_path("/sys/fs/cgroup/unified/x/y"), "/x/y");
        assert_eq!(h.cgroup_path("/sys/fs/cgroup/unified"), "/");
        assert_eq!(level_of("/"), 0);
        assert_eq!(level_of("/x/y"), 2);
    }

    #[test]
    fn within_means_at_or_below() {
        assert!(Names::is_within("/a/b", "/a"));
        assert!(Names::is_within("/a", "/a"));
        assert!(Names::is_within("/a", "/"));
        assert!(!Names::is_within("/ab", "/a"));
        assert!(!Names::is_within("/", "/a"));
    }

    #[test]
    fn names_this_hosts_root_and_keeps_gone_cgroups() {
        let hierarchy = Hierarchy::find().expect("this project's machines mount cgroup v2");
        let root = hierarchy.id_of("/").unwrap();
        let mut names = Names::new(Some(hierarchy));
        assert_eq!(&*names.resolve(root).unwrap().path, "/");
        let walks = names.walks();
        // An id no walk finds is remembered as unknown: no walk per event.
        let gone = u64::MAX - 1;
        std::thread::sleep(REWALK_INTERVAL);
        assert_eq!(names.resolve(gone), None);
        assert_eq!(names.walks(), walks + 1);
        assert_eq!(names.resolve(gone), None);
        assert_eq!(names.walks(), walks + 1);
    }
}
