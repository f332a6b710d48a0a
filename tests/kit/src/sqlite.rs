//! Damaging an SQLite database file the way a bad disk would: whole pages of garbage.

use std::path::Path;

/// Overwrites with garbage every page of the SQLite file at `path` that holds `marker`, and
/// returns how many pages that was. The file must be closed, its WAL folded in, so the bytes
/// on disk are the whole database.
pub fn damage_pages_holding(path: &Path, marker: &[u8]) -> usize {
    let mut bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        bytes.len() >= 100,
        "{} is too short for an SQLite header",
        path.display()
    );
    // The header stores the page size big-endian at offset 16, with 1 meaning 65,536.
    let page_size = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65_536,
        n => usize::from(n),
    };
    let mut damaged = 0;
    for page in bytes.chunks_mut(page_size) {
        if page.windows(marker.len()).any(|w| w == marker) {
            for (i, byte) in page.iter_mut().enumerate() {
                *byte = b"garbage!"[i % 8];
            }
            damaged += 1;
        }
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    damaged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pages_holding_the_marker_are_overwritten() {
        let dir = std::env::temp_dir().join(format!("flatsync-kit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("pages.db");
        // A header announcing 512-byte pages, then three pages; the marker is in the second.
        let mut bytes = vec![0_u8; 3 * 512];
        bytes[16..18].copy_from_slice(&512_u16.to_be_bytes());
        bytes[600..606].copy_from_slice(b"MARKER");
        std::fs::write(&path, &bytes).expect("write");

        assert_eq!(damage_pages_holding(&path, b"MARKER"), 1);
        let after = std::fs::read(&path).expect("read");
        assert_eq!(after[..512], bytes[..512], "the first page is untouched");
        assert_eq!(after[1024..], bytes[1024..], "the third page is untouched");
        assert_eq!(&after[512..520], b"garbage!");
        assert_eq!(
            damage_pages_holding(&path, b"MARKER"),
            0,
            "nothing left to find"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
