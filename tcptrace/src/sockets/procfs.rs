//! The kernel's TCP tables as procfs shows them (`/proc/PID/net/tcp` and
//! `tcp6`, one process per network namespace: tcp4_seq_show/tcp6_seq_show
//! list full, request and timewait sockets), and the owners of sockets from
//! their inodes in `/proc/*/fd`, as `ss -p` finds them.
use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use tcptrace_common::{tcp_state::*, ListenerOwner, COMM_LEN, EVENT_OWNER_IN_CGROUP};

use super::{Owner, Scope, Tuple, Walked};
use crate::cgroups::{self, Hierarchy};

/// Parses `/proc/net/tcp` or `tcp6` as shown in namespace `netns`.
pub fn parse_proc_net_tcp(text: &str, netns: u32) -> Vec<Walked> {
    text.lines()
        .skip(1)
        .filter_map(|line| parse_line(line, netns))
        .collect()
}

fn parse_line(line: &str, netns: u32) -> Option<Walked> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let (local, lport) = parse_endpoint(fields.next()?)?;
    let (remote, rport) = parse_endpoint(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    let _queues = fields.next()?;
    let timer = fields.next()?;
    let timer_active = u8::from_str_radix(timer.split(':').next()?, 16).ok()?;
    let _retransmits = fields.next()?;
    let _uid = fields.next()?;
    let _timeout = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    // Timewait sockets show timer 3 (tw_timer), inode 0 and their
    // sub-state (FIN_WAIT2 or TIME_WAIT) as the state.
    let timewait = timer_active == 3 && inode == 0;
    if !(ESTABLISHED..=CLOSING).contains(&state) || state == CLOSE {
        return None;
    }
    Some(Walked {
        tuple: Tuple {
            netns,
            local,
            lport,
            remote,
            rport,
        },
        state,
        timewait,
        inode,
    })
}

/// `0100007F:1F90` or a 32-digit IPv6 address: each 32-bit word printed
/// as a number in host order.
fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let addr = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((addr, port))
}

/// Inode of a network namespace file (`/proc/PID/ns/net`, `/run/netns/X`).
pub fn netns_inode(path: &Path) -> std::io::Result<u32> {
    Ok(fs::metadata(path)?.ino() as u32)
}

/// tcptrace's own network namespace.
pub fn current_netns() -> Result<u32> {
    netns_inode(Path::new("/proc/self/ns/net")).context("reading /proc/self/ns/net")
}

/// Walks the kernel's TCP tables of every namespace in `scope`.
pub fn walk(scope: Scope) -> Result<Vec<Walked>> {
    match scope {
        Scope::Netns(netns) => read_tables(Path::new("/proc/self/net"), netns),
        Scope::All => {
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for (netns, pid) in namespaces_with_processes() {
                if seen.contains(&netns) {
                    continue;
                }
                // The process may be gone: the next one in it will do.
                if let Ok(found) = read_tables(&PathBuf::from(format!("/proc/{pid}/net")), netns) {
                    out.extend(found);
                    seen.insert(netns);
                }
            }
            // Named namespaces without a process (`ip netns add`).
            for dir in ["/run/netns", "/var/run/netns"] {
                let Ok(entries) = fs::read_dir(dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    let Ok(netns) = netns_inode(&path) else {
                        continue;
                    };
                    if seen.insert(netns) {
                        if let Ok(found) = read_tables_in(&path, netns) {
                            out.extend(found);
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

fn read_tables(dir: &Path, netns: u32) -> Result<Vec<Walked>> {
    let mut out = Vec::new();
    for name in ["tcp", "tcp6"] {
        let path = dir.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => out.extend(parse_proc_net_tcp(&text, netns)),
            // No IPv6 in this kernel.
            Err(e) if name == "tcp6" && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(out)
}

/// Reads the tables of the namespace at `ns_path` from a thread that
/// joins it (setns changes the calling thread only).
fn read_tables_in(ns_path: &Path, netns: u32) -> Result<Vec<Walked>> {
    let ns_path = ns_path.to_path_buf();
    std::thread::spawn(move || -> Result<Vec<Walked>> {
        let file =
            fs::File::open(&ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("entering {}", ns_path.display()));
        }
        read_tables(Path::new("/proc/thread-self/net"), netns)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace reader panicked"))?
}

/// (namespace inode, pid) for every process, one entry per process.
fn namespaces_with_processes() -> Vec<(u32, u32)> {
    processes()
        .filter_map(|(pid, dir)| Some((netns_inode(&dir.join("ns/net")).ok()?, pid)))
        .collect()
}

/// Walks `scope` and finds the owner of every full socket.
pub fn walk_with_owners(scope: Scope) -> Result<(Vec<Walked>, HashMap<u64, Owner>)> {
    let walked = walk(scope)?;
    let inodes = walked.iter().map(|w| w.inode).filter(|&i| i != 0).collect();
    let owners = inode_owners(&inodes);
    Ok((walked, owners))
}

/// Every process: (pid, its /proc directory). Processes come and go while
/// this is walked; callers skip what vanished.
pub fn processes() -> impl Iterator<Item = (u32, std::path::PathBuf)> {
    fs::read_dir("/proc")
        .into_iter()
        .flat_map(|dir| dir.flatten())
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, entry.path()))
        })
}

/// Owners of these socket inodes: the first process holding each open, as
/// `ss -p` finds them.
pub fn inode_owners(wanted: &HashSet<u64>) -> HashMap<u64, Owner> {
    let mut owners = HashMap::new();
    if wanted.is_empty() {
        return owners;
    }
    let hierarchy = Hierarchy::find();
    for (pid, dir) in processes() {
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut comm = None;
        let mut cgroup = None;
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if !wanted.contains(&inode) || owners.contains_key(&inode) {
                continue;
            }
            let comm = *comm.get_or_insert_with(|| comm_of(pid));
            let cgroup = *cgroup.get_or_insert_with(|| cgroups::id_of_pid(hierarchy.as_ref(), pid));
            owners.insert(inode, Owner { pid, comm, cgroup });
        }
    }
    owners
}

fn comm_of(pid: u32) -> [u8; COMM_LEN] {
    let mut comm = [0u8; COMM_LEN];
    if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/comm")) {
        let bytes = text.trim_end_matches('\n').as_bytes();
        let n = bytes.len().min(COMM_LEN - 1);
        comm[..n].copy_from_slice(&bytes[..n]);
    }
    comm
}

/// Listening ports of this network namespace with the process owning each.
/// With `cgroup` (`--cgroup`'s id and level), each says whether its owner
/// is in that subtree, as the probe decides for a listen() it sees.
pub fn existing_listeners(cgroup: Option<(u64, u32)>) -> Vec<(u16, ListenerOwner)> {
    let hierarchy = Hierarchy::find();
    let in_cgroup = |pid: u32| {
        let (Some((id, level)), Some(h)) = (cgroup, &hierarchy) else {
            return 0;
        };
        let inside = cgroups::path_of_pid(pid)
            .and_then(|path| cgroups::ancestor_id(h, &path, level))
            .is_some_and(|ancestor| ancestor == id);
        if inside {
            EVENT_OWNER_IN_CGROUP
        } else {
            0
        }
    };
    let by_inode: HashMap<u64, u16> = read_tables(Path::new("/proc/self/net"), 0)
        .unwrap_or_default()
        .into_iter()
        .filter(|w| w.state == LISTEN && w.inode != 0)
        .map(|w| (w.inode, w.tuple.lport))
        .collect();
    if by_inode.is_empty() {
        return Vec::new();
    }
    inode_owners(&by_inode.keys().copied().collect())
        .into_iter()
        .map(|(inode, owner)| {
            (
                by_inode[&inode],
                ListenerOwner {
                    pid: owner.pid,
                    flags: in_cgroup(owner.pid),
                    _pad: [0; 3],
                    comm: owner.comm,
                    cgroup: owner.cgroup,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 08 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D432 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   3: 0100007F:D433 0100007F:1F90 05 00000000:00000000 03:00000BB8 00000000     0        0 0 3 0000000000000000
   4: 0100007F:D434 0100007F:1F90 05 00000000:00000000 00:00000000 00000000     0        0 12347 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn parses_ipv4_lines() {
        let found = parse_proc_net_tcp(TABLE, 7);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(found.len(), 5);
        assert_eq!(found[0].state, LISTEN);
        assert_eq!(found[0].tuple.local, lo);
        assert_eq!(found[0].tuple.lport, 8080);
        assert_eq!(found[0].tuple.remote, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!((found[0].inode, found[0].timewait), (12345, false));
        assert_eq!(found[1].state, CLOSE_WAIT);
        assert_eq!((found[1].tuple.rport, found[1].tuple.netns), (0xD431, 7));
        assert_eq!((found[2].state, found[2].timewait), (TIME_WAIT, true));
        assert_eq!((found[3].state, found[3].timewait), (FIN_WAIT2, true));
        assert_eq!((found[4].state, found[4].timewait), (FIN_WAIT2, false));
    }

    #[test]
    fn parses_ipv6_lines() {
        let line = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 0000000000000000FFFF00000100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 20 4 30 10 -1
";
        let found = parse_proc_net_tcp(line, 1);
        assert_eq!(found[0].tuple.local, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            found[0].tuple.remote,
            "::ffff:127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!((found[0].tuple.lport, found[0].tuple.rport), (8080, 50000));
        assert_eq!(found[0].state, ESTABLISHED);
    }

    #[test]
    fn reads_our_own_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let netns = current_netns().unwrap();
        let (walked, owners) = walk_with_owners(Scope::Netns(netns)).unwrap();
        let w = walked
            .iter()
            .find(|w| w.tuple.lport == port && w.state == LISTEN)
            .expect("our listener");
        assert_eq!(owners[&w.inode].pid, std::process::id());
    }

    #[test]
    fn finds_our_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = existing_listeners(None);
        let (_, owner) = found
            .iter()
            .find(|(p, _)| *p == port)
            .expect("listener found");
        assert_eq!(owner.pid, std::process::id());
    }
}
