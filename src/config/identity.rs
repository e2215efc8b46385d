//! Where this node's id and instance come from when the config does not say.
//!
//! The Go peer derives an unset `node_id` from the OS machine id (FNV-1 64 of its text). We keep
//! that, so a node moved over from Go keeps its id, but fall back to the kernel host name, never
//! to a constant: cloned images and containers often lack a machine id, and two nodes with one
//! id would take each other's changes for their own. Two clones that share a machine id are
//! caught at start by the registry claim (`schema::registry::claim`).

use std::fmt;

/// Machine-id files, in the order the Go peer reads them.
const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];
/// The kernel's host name (`uname -n`), whatever the environment says.
const KERNEL_HOST_NAME: &str = "/proc/sys/kernel/hostname";

/// What the node id was taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIdSource {
    /// `node_id` in the config file or `-node-id`.
    Configured,
    /// FNV-1 64 of the machine id in this file.
    MachineId(String),
    /// FNV-1 64 of the kernel host name.
    HostName(String),
}

impl fmt::Display for NodeIdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeIdSource::Configured => f.write_str("the configuration"),
            NodeIdSource::MachineId(path) => write!(f, "the machine id in {path}"),
            NodeIdSource::HostName(name) => write!(f, "the kernel host name {name:?}"),
        }
    }
}

/// The derived id and where it came from; `None` only when the machine has neither a machine
/// id nor a host name (then the operator must set `node_id`).
pub fn derive_node_id() -> Option<(u64, NodeIdSource)> {
    let machine = MACHINE_ID_FILES.iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        let id = text.trim();
        (!id.is_empty()).then(|| (fnv1_64(id.as_bytes()), path.to_string()))
    });
    if let Some((id, path)) = machine {
        return Some((id, NodeIdSource::MachineId(path)));
    }
    let host = host_name()?;
    Some((fnv1_64(host.as_bytes()), NodeIdSource::HostName(host)))
}

/// The kernel host name, if the kernel has one.
pub fn host_name() -> Option<String> {
    let text = std::fs::read_to_string(KERNEL_HOST_NAME).ok()?;
    let name = text.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// FNV-1 (not 1a) 64-bit, Go's `hash/fnv.New64`.
pub fn fnv1_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        hash ^= u64::from(*b);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1_matches_go() {
        // Go: fnv.New64(); h.Write([]byte("a")); h.Sum64()
        assert_eq!(fnv1_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1_64(b"a"), 0xaf63_bd4c_8601_b7be);
    }

    #[test]
    fn derivation_names_its_source_and_is_stable() {
        let (id, source) = derive_node_id().expect("this machine has a machine id or host name");
        assert_eq!(derive_node_id().map(|d| d.0), Some(id));
        match &source {
            NodeIdSource::MachineId(path) => assert!(MACHINE_ID_FILES.contains(&path.as_str())),
            NodeIdSource::HostName(name) => assert_eq!(Some(name.clone()), host_name()),
            NodeIdSource::Configured => panic!("derived ids are not configured"),
        }
        assert!(source.to_string().len() > 10);
    }
}
