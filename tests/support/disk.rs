//! A small disk that a test can fill and empty: a tmpfs mounted on a directory.
//!
//! Mounting needs root, or a user and mount namespace of the test's own: run the tests as a
//! normal user with `unshare -rm cargo test ...`.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a fixed size on `path`, unmounted on drop.
#[derive(Debug)]
pub struct SmallDisk {
    path: PathBuf,
    filler: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` on `path` (created if missing).
    pub fn mount(path: &Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("cannot run mount");
        assert!(
            output.status.success(),
            "cannot mount a {bytes}-byte tmpfs on {}: {}\nThese tests need root, or run them \
             in a namespace of their own: `unshare -rm cargo test ...`",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        SmallDisk {
            path: path.to_path_buf(),
            filler: path.join(".filler"),
        }
    }

    /// Fills the disk, then frees `bytes` of it again.
    pub fn fill_leaving(&self, bytes: u64) {
        self.fill();
        let file = OpenOptions::new()
            .write(true)
            .open(&self.filler)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.filler.display()));
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        file.set_len(len.saturating_sub(bytes))
            .unwrap_or_else(|e| panic!("cannot shorten {}: {e}", self.filler.display()));
    }

    /// Writes a filler file until the disk refuses another byte.
    pub fn fill(&self) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.filler.display()));
        let block = vec![0u8; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::StorageFull => break,
                Err(e) => panic!("cannot fill {}: {e}", self.filler.display()),
            }
        }
        // Single bytes into the last partial page, so not even a small write fits.
        while let Ok(1) = file.write(&[0]) {}
    }

    /// Removes the filler: the space is back.
    pub fn empty(&self) {
        std::fs::remove_file(&self.filler)
            .unwrap_or_else(|e| panic!("cannot remove {}: {e}", self.filler.display()));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a daemon killed a moment ago may still hold a file open on it.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
