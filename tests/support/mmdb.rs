//! A minimal writer of MaxMind DB files (IPv4, 24-bit records), enough to build the small
//! country databases the tests and the benches read: networks mapped to
//! `{"country": {"iso_code": CODE}}`. Shared by `tests/it` and `benches` through `#[path]`.
//!
//! The format: a binary search tree over the address bits (each node two 3-byte records:
//! a node number, the node count for "no data", or the node count + 16 + an offset into
//! the data section), 16 zero bytes, the data section, then the metadata marker and the
//! metadata map, all values in the MaxMind DB data format.

/// What a tree record points at while the tree is built.
#[derive(Clone, Copy)]
enum Record {
    Empty,
    Node(u32),
    Data(u32),
}

/// Writes a database mapping each `(network, prefix length, country)` (networks must not
/// overlap) and returns its bytes.
pub(crate) fn country_db(networks: &[([u8; 4], u8, &str)]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut nodes: Vec<[Record; 2]> = vec![[Record::Empty; 2]];
    for (net, len, country) in networks {
        let offset = data.len() as u32;
        map_header(&mut data, 1);
        string(&mut data, "country");
        map_header(&mut data, 1);
        string(&mut data, "iso_code");
        string(&mut data, country);
        let bits = u32::from_be_bytes(*net);
        let mut node = 0usize;
        for depth in 0..*len {
            let bit = ((bits >> (31 - depth)) & 1) as usize;
            if depth + 1 == *len {
                nodes[node][bit] = Record::Data(offset);
                break;
            }
            node = match nodes[node][bit] {
                Record::Node(n) => n as usize,
                _ => {
                    nodes.push([Record::Empty; 2]);
                    let n = nodes.len() - 1;
                    nodes[node][bit] = Record::Node(n as u32);
                    n
                }
            };
        }
    }
    let count = nodes.len() as u32;
    let mut out = Vec::new();
    for node in &nodes {
        for record in node {
            let value = match record {
                Record::Empty => count,
                Record::Node(n) => *n,
                Record::Data(off) => count + 16 + off,
            };
            out.extend_from_slice(&value.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    map_header(&mut out, 9);
    string(&mut out, "node_count");
    uint(&mut out, 6, u64::from(count));
    string(&mut out, "record_size");
    uint(&mut out, 5, 24);
    string(&mut out, "ip_version");
    uint(&mut out, 5, 4);
    string(&mut out, "database_type");
    string(&mut out, "Test-Country");
    string(&mut out, "languages");
    out.extend_from_slice(&[1, 4]); // an array (extended type 11) of one
    string(&mut out, "en");
    string(&mut out, "binary_format_major_version");
    uint(&mut out, 5, 2);
    string(&mut out, "binary_format_minor_version");
    uint(&mut out, 5, 0);
    string(&mut out, "build_epoch");
    out.extend_from_slice(&[4, 2]); // a uint64 (extended type 9) of four bytes
    out.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    string(&mut out, "description");
    map_header(&mut out, 1);
    string(&mut out, "en");
    string(&mut out, "countries for tests");
    out
}

fn map_header(out: &mut Vec<u8>, pairs: u8) {
    out.push((7 << 5) | pairs);
}

fn string(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 29, "short strings only");
    out.push((2 << 5) | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// An unsigned integer of type `kind` (5: uint16, 6: uint32), in as few bytes as it needs.
fn uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push((kind << 5) | (8 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}
