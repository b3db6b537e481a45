//! Owners of sockets that existed before tcptrace started, from procfs
//! (socket inode -> /proc/PID/fd, as `ss -p` does).
use std::{
    collections::{HashMap, HashSet},
    fs,
};

use tcptrace_common::{ListenerOwner, COMM_LEN};

const TCP_LISTEN_HEX: &str = "0A";

/// Local ports of listening sockets and the inode of each.
pub fn parse_listeners(table: &str) -> Vec<(u16, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&TCP_LISTEN_HEX) {
                return None;
            }
            let port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some((port, inode))
        })
        .collect()
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

/// Who holds (or last held) a socket open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
}

/// Owners of these socket inodes: the first process holding each open, as
/// `ss -p` finds them.
pub fn inode_owners(wanted: &HashSet<u64>) -> HashMap<u64, Owner> {
    let mut owners = HashMap::new();
    if wanted.is_empty() {
        return owners;
    }
    for (pid, dir) in processes() {
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut comm = None;
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
            owners.insert(inode, Owner { pid, comm });
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
pub fn existing_listeners() -> Vec<(u16, ListenerOwner)> {
    let mut by_inode = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            by_inode.extend(
                parse_listeners(&text)
                    .into_iter()
                    .map(|(port, inode)| (inode, port)),
            );
        }
    }
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
                    _pad: 0,
                    comm: owner.comm,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(parse_listeners(table), vec![(8080, 12345)]);
    }

    #[test]
    fn finds_our_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = existing_listeners();
        let (_, owner) = found
            .iter()
            .find(|(p, _)| *p == port)
            .expect("listener found");
        assert_eq!(owner.pid, std::process::id());
    }
}
