//! Values given on the command line and shown back: page sizes (`4k`, `2m`) and worker
//! placements (`spread`, `near-dst`, a CPU list). Several commands take them.

use pagemig::copy::Placement;
use pagemig::topology::IdSet;

/// A page size given as `4k`, `64K`, `2m` or a number of bytes.
pub fn parse_page_size(text: &str) -> Result<usize, String> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, scale) = match t.strip_suffix(['k', 'm', 'g']) {
        Some(d) if t.ends_with('k') => (d, 1 << 10),
        Some(d) if t.ends_with('m') => (d, 1 << 20),
        Some(d) => (d, 1 << 30),
        None => (t.as_str(), 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("bad page size {text:?}: expected e.g. 4k, 64k, 2m"))?;
    let size = n
        .checked_mul(scale)
        .ok_or_else(|| format!("bad page size {text:?}: too large"))?;
    if !size.is_power_of_two() || size < 4096 {
        return Err(format!(
            "bad page size {text:?}: must be a power of two of at least 4k"
        ));
    }
    Ok(size)
}

/// `4096` → `4K`, `2097152` → `2M`.
pub fn page_size_label(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{}M", size >> 20)
    } else {
        format!("{}K", size >> 10)
    }
}

/// A worker placement: `spread`, `near-dst`, `near-src`, or a CPU list.
pub fn parse_placement(text: &str) -> Result<Placement, String> {
    match text {
        "spread" => Ok(Placement::SpreadL3),
        "near-dst" => Ok(Placement::NearDst),
        "near-src" => Ok(Placement::NearSrc),
        list if list.trim().is_empty() => {
            Err("empty: expected spread, near-dst, near-src or a CPU list".into())
        }
        list => {
            let cpus: IdSet = list
                .parse()
                .map_err(|e| format!("expected spread, near-dst, near-src or a CPU list: {e}"))?;
            match given_twice(list) {
                Some(cpu) => Err(format!("bad list {list:?}: CPU {cpu} is given twice")),
                None => Ok(Placement::Explicit(cpus)),
            }
        }
    }
}

/// The first node or CPU that a list which parsed (`0-2,4`) names twice, as `0,0` and `0-2,1`
/// do.
pub fn given_twice(list: &str) -> Option<u32> {
    let mut seen = IdSet::new();
    for item in list.split(',') {
        // The list parsed whole, so every item parses alone.
        let item: IdSet = item.parse().ok()?;
        if let Some(id) = item.intersection(&seen).iter().next() {
            return Some(id);
        }
        for id in item.iter() {
            seen.insert(id);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        assert_eq!(parse_page_size("4k"), Ok(4096));
        assert_eq!(parse_page_size("64K"), Ok(65536));
        assert_eq!(parse_page_size("2m"), Ok(2 << 20));
        assert_eq!(parse_page_size("8192"), Ok(8192));
        assert!(parse_page_size("3k").unwrap_err().contains("power of two"));
        assert!(parse_page_size("x").unwrap_err().contains("bad page size"));
        assert_eq!(page_size_label(2 << 20), "2M");
        assert_eq!(page_size_label(65536), "64K");
    }

    #[test]
    fn placements_parse() {
        assert_eq!(parse_placement("spread"), Ok(Placement::SpreadL3));
        assert_eq!(
            parse_placement("0-1"),
            Ok(Placement::Explicit("0-1".parse().unwrap()))
        );
        assert!(
            parse_placement("near")
                .unwrap_err()
                .contains("expected spread")
        );
        assert_eq!(
            parse_placement("0,0").unwrap_err(),
            "bad list \"0,0\": CPU 0 is given twice"
        );
        assert!(
            parse_placement("0-1,1")
                .unwrap_err()
                .contains("CPU 1 is given twice")
        );
    }
}
