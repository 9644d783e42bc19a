//! Files that survive kill -9 and power loss: each write goes to a temporary file that is
//! fsynced and renamed over the old one, and the directory is fsynced, so a reader sees the
//! old version or the new one, never a torn one.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// Makes a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, bytes, fs::OpenOptions::new())
}

/// As [`write_atomic`], for secrets: the file is created mode 0600 before anything is
/// written to it, so no other user ever reads the bytes.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = fs::OpenOptions::new();
    options.mode(0o600);
    write_with(path, bytes, options)
}

/// A temporary file next to `path`, of this write alone: two writers of one file (two
/// instances of a function starting at once) never share one, and neither do `a.x` and
/// `a.y`. Hidden, so a crash's leftover is not listed as an entry.
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    parent(path).join(format!(".{name}.{}-{n}.tmp", std::process::id()))
}

fn write_with(path: &Path, bytes: &[u8], mut options: fs::OpenOptions) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let mut f = options.write(true).create(true).truncate(true).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(parent(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_and_keeps_secrets_private() {
        let d = std::env::temp_dir().join(format!("faasd-durable-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let p = d.join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // Writers at once each have their own temporary file: none fails, none is left.
        std::thread::scope(|s| {
            for i in 0..8 {
                let p = &p;
                s.spawn(move || write_atomic(p, format!("w{i}").as_bytes()).unwrap());
            }
        });
        assert!(fs::read_to_string(&p).unwrap().starts_with('w'));
        let left: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["f"], "temporary files left");
        let s = d.join("secret");
        write_private(&s, b"x").unwrap();
        assert_eq!(
            fs::metadata(&s).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
