//! Owners of sockets that existed before tcptrace started, from procfs
//! (socket inode -> /proc/PID/fd, as `ss -p` does).
use std::{collections::HashMap, fs};

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

/// Maps socket inodes to the first process holding them open.
fn socket_inode_owners(wanted: &HashMap<u64, u16>) -> HashMap<u64, u32> {
    let mut owners = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we walk: skip what vanished.
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(inode) = inode.filter(|i| wanted.contains_key(i)) {
                owners.entry(inode).or_insert(pid);
            }
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
    socket_inode_owners(&by_inode)
        .into_iter()
        .map(|(inode, pid)| {
            (
                by_inode[&inode],
                ListenerOwner {
                    pid,
                    _pad: 0,
                    comm: comm_of(pid),
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
