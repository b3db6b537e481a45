//! Every TCP socket of the host as tcptrace knows it: read from procfs at
//! start-up with its owner (`procfs`), then kept up to date from the event
//! stream (`table`), and what the stream said of timewait sockets
//! (`counts`). Used by the views (stuck, census, doctor) and, for the
//! listeners' owners, by every probe at start.
mod counts;
mod procfs;
mod table;

pub use counts::TimewaitCounts;
pub use procfs::{current_netns, existing_listeners, netns_inode, walk, walk_with_owners};
pub use table::{Entry, Owner, Scope, SocketTable, Tuple, Walked, DEFAULT_MAX_SOCKETS};
