//! A stream's progress record: how far its partial goes beyond the durable state file, written
//! after each batch without a sync.
//!
//! Bytes written to a file survive a crash of the process that wrote them (they are in the
//! operating system's page cache), though not a power cut. The record lets a restarted sink
//! keep the batches it had appended since its last flush instead of cutting them off, and tell
//! the host so (`Sink::held`), which then does not fetch them again. Because nothing is synced,
//! the record is trusted only when it is whole (its own checksum), names the durable state it
//! builds on, and the partial's bytes from that state's length to the record's length still
//! have the checksum it recorded; anything else falls back to the durable state.

use std::fs::{File, OpenOptions};
use std::hash::Hasher as _;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher13;

/// First bytes of a progress record, naming its layout.
const MAGIC: &[u8; 8] = b"FSPROG01";
/// Magic, body length (u32) and body checksum (u64).
const HEADER_LEN: usize = 20;
/// A record larger than this is damaged: no sink keeps that much beside its position.
const MAX_BODY_LEN: usize = 16 << 20;

/// A 64-bit checksum of a byte stream, the same however the bytes are split into calls of
/// [`update`](Self::update). Not cryptographic: it tells bytes that were written from bytes a
/// crash left behind (zeros, an older version, a torn write). SipHash-1-3 with fixed keys
/// (`siphasher`): its output is specified, so a record written by one build is read by the next.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checksum(SipHasher13);

/// Fixed keys: the checksum must be the same in every process that reads the record.
const KEYS: (u64, u64) = (0x666c_6174_7379_6e63, 0x7072_6f67_7265_7373);

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Checksum {
    fn eq(&self, other: &Self) -> bool {
        self.finish() == other.finish()
    }
}

impl Eq for Checksum {}

impl Checksum {
    pub(crate) fn new() -> Self {
        Self(SipHasher13::new_with_keys(KEYS.0, KEYS.1))
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    /// The checksum of every byte so far; more may be added after.
    pub(crate) fn finish(&self) -> u64 {
        self.0.finish()
    }

    /// The checksum state of `file`'s bytes `start..end`, read in blocks.
    pub(crate) fn of_file_range(file: &mut File, start: u64, end: u64) -> io::Result<Checksum> {
        let mut checksum = Checksum::new();
        file.seek(SeekFrom::Start(start))?;
        let mut reader = file.take(end.saturating_sub(start));
        let mut buffer = vec![0u8; 64 * 1024];
        let mut read_in_all = 0_u64;
        loop {
            let read = reader.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            checksum.update(&buffer[..read]);
            read_in_all += read as u64;
        }
        if read_in_all != end.saturating_sub(start) {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(checksum)
    }
}

/// The body of a progress record: the durable state it builds on and the partial's state
/// after its last batch, as the state file would record it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Progress<S> {
    /// The state file's applied seq when the record was written; `None` before any flush.
    pub(crate) base_seq: Option<u64>,
    /// The state file's length then: the partial's bytes before it are durable.
    pub(crate) base_len: u64,
    /// The rows of the batches up to `saved`'s seq, when known.
    pub(crate) rows: Option<u64>,
    /// [`Checksum::finish`] of the partial's bytes from `base_len` to `saved`'s length.
    pub(crate) data: u64,
    /// What the state file would hold for this position.
    pub(crate) saved: S,
}

impl<S: Serialize> Progress<S> {
    /// The record as written: magic, body length, body checksum, JSON body.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.clear();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; HEADER_LEN - 8]);
        serde_json::to_writer(&mut *out, self)?;
        let body = &out[HEADER_LEN..];
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut checksum = Checksum::new();
        checksum.update(body);
        let sum = checksum.finish();
        out[8..12].copy_from_slice(&len.to_le_bytes());
        out[12..20].copy_from_slice(&sum.to_le_bytes());
        Ok(())
    }
}

impl<S: DeserializeOwned> Progress<S> {
    /// Reads the record at `path`. `Ok(None)` when there is none; `Err` says why one is not
    /// whole (torn, damaged, another layout): never trusted, only logged.
    pub(crate) fn read(path: &Path) -> io::Result<Option<Progress<S>>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let damaged = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(damaged("no progress record header"));
        }
        let len = u32::from_le_bytes(bytes[8..12].try_into().expect("four bytes")) as usize;
        let sum = u64::from_le_bytes(bytes[12..20].try_into().expect("eight bytes"));
        let Some(body) = bytes
            .get(HEADER_LEN..HEADER_LEN + len)
            .filter(|_| len <= MAX_BODY_LEN)
        else {
            return Err(damaged("the record is shorter than its header says"));
        };
        let mut checksum = Checksum::new();
        checksum.update(body);
        if checksum.finish() != sum {
            return Err(damaged("the record's checksum does not match"));
        }
        serde_json::from_slice(body)
            .map(Some)
            .map_err(|error| damaged(&format!("the record does not parse: {error}")))
    }
}

/// Overwrites the record in `file` (opened by [`open_record`]) in one positioned write at its
/// start. A shorter record leaves old bytes after it, which its header's length excludes.
pub(crate) fn write_record(file: &File, record: &[u8]) -> io::Result<()> {
    file.write_all_at(record, 0)
}

/// Opens (creating) the progress record at `path` for [`write_record`].
pub(crate) fn open_record(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum(bytes: &[u8]) -> u64 {
        let mut checksum = Checksum::new();
        checksum.update(bytes);
        checksum.finish()
    }

    #[test]
    fn the_checksum_does_not_depend_on_how_the_bytes_are_split() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = checksum(&bytes);
        for split in [1, 3, 7, 8, 9, 15, 64, 999] {
            let mut parts = Checksum::new();
            for part in bytes.chunks(split) {
                parts.update(part);
            }
            assert_eq!(parts.finish(), whole, "in parts of {split}");
        }
        let mut odd = Checksum::new();
        odd.update(&bytes[..5]);
        odd.update(&bytes[5..6]);
        odd.update(&bytes[6..500]);
        odd.update(&bytes[500..]);
        assert_eq!(odd.finish(), whole);
    }

    #[test]
    fn the_checksum_tells_apart_every_flipped_byte_a_cut_and_zeros() {
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 31 + 5) as u8).collect();
        let whole = checksum(&bytes);
        for i in 0..bytes.len() {
            for flip in [1u8, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[i] ^= flip;
                assert_ne!(checksum(&damaged), whole, "byte {i} ^ {flip:#x}");
            }
        }
        for cut in 0..bytes.len() {
            assert_ne!(checksum(&bytes[..cut]), whole, "cut at {cut}");
        }
        assert_ne!(checksum(&vec![0; bytes.len()]), whole);
        // A trailing zero is a byte too.
        assert_ne!(checksum(b"ab"), checksum(b"ab\0"));
        assert_ne!(checksum(b""), checksum(b"\0"));
    }

    #[test]
    fn the_checksum_of_a_file_range_is_the_checksum_of_those_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let mut file = File::open(&path).expect("open");
        let range = Checksum::of_file_range(&mut file, 17, 150_001).expect("read");
        assert_eq!(range.finish(), checksum(&bytes[17..150_001]));
        let error = Checksum::of_file_range(&mut file, 0, 300_000).expect_err("too short");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_record_reads_back_and_any_damage_to_it_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("p");
        let progress = Progress {
            base_seq: Some(3),
            base_len: 40,
            rows: Some(12),
            data: 99,
            saved: vec![1u64, 2],
        };
        let mut record = Vec::new();
        progress.encode(&mut record).expect("encode");
        let file = open_record(&path).expect("open");
        // A longer record first: the shorter one overwrites its start only.
        write_record(&file, &[b'x'; 200]).expect("write");
        write_record(&file, &record).expect("write");
        let back = Progress::<Vec<u64>>::read(&path)
            .expect("whole")
            .expect("present");
        assert_eq!(
            (
                back.base_seq,
                back.base_len,
                back.rows,
                back.data,
                back.saved
            ),
            (Some(3), 40, Some(12), 99, vec![1, 2])
        );

        for i in 0..record.len() {
            let mut damaged = record.clone();
            damaged[i] ^= 0x20;
            std::fs::write(&path, &damaged).expect("write");
            assert!(
                Progress::<Vec<u64>>::read(&path).is_err(),
                "byte {i} flipped was trusted"
            );
        }
        for cut in 0..record.len() {
            std::fs::write(&path, &record[..cut]).expect("write");
            assert!(
                Progress::<Vec<u64>>::read(&path).is_err(),
                "cut at {cut} was trusted"
            );
        }
        std::fs::remove_file(&path).expect("remove");
        assert!(
            Progress::<Vec<u64>>::read(&path)
                .expect("absent is no error")
                .is_none()
        );
    }
}
