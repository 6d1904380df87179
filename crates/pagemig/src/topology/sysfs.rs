//! Reading [`Topology`] from a sysfs tree.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{CacheDomain, CpuSet, IdSet, MemoryTier, Node, NodeSet, Topology, TopologyError};

fn read_error(path: &Path, source: std::io::Error) -> TopologyError {
    TopologyError::Read {
        path: path.to_owned(),
        source,
    }
}

fn read_opt(path: &Path) -> Result<Option<String>, TopologyError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(read_error(path, source)),
    }
}

fn bad(path: &Path, detail: impl ToString) -> TopologyError {
    TopologyError::Parse {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

fn parse_list(path: &Path, text: &str) -> Result<IdSet, TopologyError> {
    text.parse().map_err(|e: super::ListError| bad(path, e))
}

pub(super) fn read_list(path: &Path) -> Result<Option<IdSet>, TopologyError> {
    read_opt(path)?.map(|t| parse_list(path, &t)).transpose()
}

/// `numbered(dir, "node")` lists the ids N of entries `dirN` under `dir`, sorted.
fn numbered(dir: &Path, prefix: &str) -> Result<Vec<u32>, TopologyError> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(numbered_entries(entries, prefix)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(read_error(dir, source)),
    }
}

/// The numbers N of the entries named `PREFIXN` of a directory listing, sorted.
pub(crate) fn numbered_entries<T: FromStr + Ord>(entries: fs::ReadDir, prefix: &str) -> Vec<T> {
    let mut ids: Vec<T> = entries
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix(prefix)?
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Parses `Node 0 MemTotal:  24567000 kB` lines into bytes by field name.
pub(super) fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            let key = key.split_whitespace().last()?;
            let mut words = value.split_whitespace();
            let n: u64 = words.next()?.parse().ok()?;
            let scale = if words.next() == Some("kB") { 1024 } else { 1 };
            Some((key.to_owned(), n.checked_mul(scale)?))
        })
        .collect()
}

/// Bytes with an optional K, M, G or T suffix (powers of 1024, either case, an optional `B` or
/// `iB` after it), as cache `size` files (`32768K`) and users (`2GiB`) write them.
pub(crate) fn parse_bytes(text: &str) -> Option<u64> {
    let upper = text.trim().to_ascii_uppercase();
    let digits = upper.trim_end_matches("IB").trim_end_matches('B');
    let (number, shift) = match digits.strip_suffix(['K', 'M', 'G', 'T']) {
        Some(number) => (number, 10 * (1 + "KMGT".find(&digits[number.len()..])?)),
        None => (digits, 0),
    };
    number.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

pub(super) fn read(root: &Path) -> Result<Topology, TopologyError> {
    let cpu_dir = root.join("devices/system/cpu");
    let node_dir = root.join("devices/system/node");
    let online_path = cpu_dir.join("online");
    let online_text =
        fs::read_to_string(&online_path).map_err(|source| read_error(&online_path, source))?;
    let online_cpus = parse_list(&online_path, &online_text)?;

    let nodes = match read_list(&node_dir.join("online"))? {
        Some(online) => read_nodes(&node_dir, &online, &online_cpus)?,
        // A kernel built without NUMA: one node holding every CPU.
        None => vec![Node {
            id: 0,
            cpus: online_cpus.clone(),
            mem_total: 0,
            mem_free: 0,
            has_memory: true,
            distances: BTreeMap::from([(0, 10)]),
        }],
    };

    Ok(Topology {
        l3_domains: read_l3_domains(&cpu_dir, &online_cpus, &nodes)?,
        tiers: read_tiers(&root.join("devices/virtual/memory_tiering"))?,
        nodes,
        online_cpus,
    })
}

fn read_nodes(
    node_dir: &Path,
    online: &NodeSet,
    online_cpus: &CpuSet,
) -> Result<Vec<Node>, TopologyError> {
    let has_memory = read_list(&node_dir.join("has_memory"))?;
    let mut nodes = Vec::new();
    if let Some(id) = online
        .iter()
        .find(|id| !node_dir.join(format!("node{id}")).is_dir())
    {
        let detail = format!("node {id} is online but node{id} does not exist");
        return Err(bad(&node_dir.join("online"), detail));
    }
    for id in online.iter() {
        let dir = node_dir.join(format!("node{id}"));
        let cpus = read_list(&dir.join("cpulist"))?
            .unwrap_or_default()
            .intersection(online_cpus);
        let meminfo_path = dir.join("meminfo");
        let meminfo = read_opt(&meminfo_path)?;
        let mem = meminfo.as_deref().map(parse_meminfo).unwrap_or_default();
        if meminfo.is_some() && !mem.contains_key("MemTotal") {
            return Err(bad(&meminfo_path, "no \"Node N MemTotal: SIZE kB\" line"));
        }
        let mem_total = mem.get("MemTotal").copied().unwrap_or(0);
        let distance_path = dir.join("distance");
        let distances = match read_opt(&distance_path)? {
            Some(text) => {
                let values = text
                    .split_whitespace()
                    .map(str::parse::<u32>)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(&distance_path, e))?;
                // The kernel writes one distance per online node, in id order.
                if values.len() != online.len() {
                    let (n, nodes) = (values.len(), online.len());
                    let detail = format!("{n} distance(s) for {nodes} online node(s) ({online})");
                    return Err(bad(&distance_path, detail));
                }
                online.iter().zip(values).collect()
            }
            None => BTreeMap::new(),
        };
        nodes.push(Node {
            id,
            cpus,
            mem_total,
            mem_free: mem.get("MemFree").copied().unwrap_or(0),
            has_memory: has_memory
                .as_ref()
                .map_or(mem_total > 0, |set| set.contains(id)),
            distances,
        });
    }
    Ok(nodes)
}

/// Groups online CPUs by the CPUs sharing their level-3 cache; CPUs without a described L3
/// are grouped by node.
fn read_l3_domains(
    cpu_dir: &Path,
    online_cpus: &CpuSet,
    nodes: &[Node],
) -> Result<Vec<CacheDomain>, TopologyError> {
    let mut groups: BTreeMap<u32, (CpuSet, Option<u64>)> = BTreeMap::new();
    for cpu in online_cpus.iter() {
        let cache_dir = cpu_dir.join(format!("cpu{cpu}/cache"));
        let mut found = None;
        for index in numbered(&cache_dir, "index")? {
            let dir = cache_dir.join(format!("index{index}"));
            if read_opt(&dir.join("level"))?.as_deref().map(str::trim) != Some("3") {
                continue;
            }
            if let Some(shared) = read_list(&dir.join("shared_cpu_list"))? {
                let size = read_opt(&dir.join("size"))?
                    .as_deref()
                    .and_then(parse_bytes);
                found = Some((shared.intersection(online_cpus), size));
                break;
            }
        }
        let (cpus, size) = found.unwrap_or_else(|| {
            let node = nodes.iter().find(|n| n.cpus.contains(cpu));
            let cpus = node.map_or_else(|| CpuSet::from_iter([cpu]), |n| n.cpus.clone());
            (cpus, None)
        });
        let first = cpus.iter().next().unwrap_or(cpu);
        groups.entry(first).or_insert((cpus, size));
    }
    Ok(groups
        .into_values()
        .enumerate()
        .map(|(index, (cpus, size))| CacheDomain {
            index,
            nodes: nodes
                .iter()
                .filter(|n| !n.cpus.intersection(&cpus).is_empty())
                .map(|n| n.id)
                .collect(),
            cpus,
            size,
        })
        .collect())
}

fn read_tiers(dir: &Path) -> Result<Vec<MemoryTier>, TopologyError> {
    let mut tiers = Vec::new();
    for id in numbered(dir, "memory_tier")? {
        let path: PathBuf = dir.join(format!("memory_tier{id}/nodelist"));
        if let Some(nodes) = read_list(&path)? {
            tiers.push(MemoryTier { id, nodes });
        }
    }
    Ok(tiers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_sizes() {
        let m = parse_meminfo(
            "Node 1 MemTotal:       1000 kB\nNode 1 MemFree:   10 kB\nNode 1 HugePages_Total:     0\n",
        );
        assert_eq!(m["MemTotal"], 1_024_000);
        assert_eq!(m["MemFree"], 10_240);
        assert_eq!(m["HugePages_Total"], 0);
        assert_eq!(parse_bytes("32768K"), Some(32 << 20));
        assert_eq!(parse_bytes("1M\n"), Some(1 << 20));
        assert_eq!(parse_bytes("junk"), None);
    }
}
