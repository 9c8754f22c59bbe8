//! Notices when files change, by polling their metadata.
//!
//! Polling the resolved path, size, mtime and inode catches every way a file is replaced:
//! in-place writes, rename-over, and the Kubernetes Secret/ConfigMap `..data` symlink swap
//! (where the path stays the same but resolves to a new file), without inotify's edge cases.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

type Stamp = Option<(PathBuf, u64, Option<SystemTime>, u64)>;

/// What the watched files look like at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(Vec<Stamp>);

impl Fingerprint {
    pub(crate) fn of(paths: &[PathBuf]) -> Self {
        Fingerprint(paths.iter().map(|p| stamp(p)).collect())
    }
}

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let resolved = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&resolved).ok()?;
    Some((resolved, meta.len(), meta.modified().ok(), meta.ino()))
}

/// Watches files from a background thread; dropping it stops the thread.
pub(crate) struct Watcher {
    _stop: mpsc::Sender<()>,
}

impl Watcher {
    /// Calls `on_change` whenever the files differ from `initial` (taken before the caller
    /// loaded them, so a change made in between is not missed).
    pub(crate) fn spawn(
        name: &str,
        paths: Vec<PathBuf>,
        initial: Fingerprint,
        interval: Duration,
        mut on_change: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name(format!("watch-{name}"))
            .spawn(move || {
                let mut last = initial;
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                    let now = Fingerprint::of(&paths);
                    if now != last {
                        last = now;
                        on_change();
                    }
                }
            })?;
        Ok(Watcher { _stop: tx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_swap_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("v1")).unwrap();
        std::fs::create_dir(d.join("v2")).unwrap();
        std::fs::write(d.join("v1/f"), "same").unwrap();
        std::fs::write(d.join("v2/f"), "same").unwrap();
        std::os::unix::fs::symlink("v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/f", d.join("f")).unwrap();
        let paths = vec![d.join("f")];
        let before = Fingerprint::of(&paths);
        std::os::unix::fs::symlink("v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert_ne!(before, Fingerprint::of(&paths));
    }

    #[test]
    fn calls_back_on_change_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "a").unwrap();
        let paths = vec![f.clone()];
        let (tx, rx) = mpsc::channel();
        let w = Watcher::spawn(
            "t",
            paths.clone(),
            Fingerprint::of(&paths),
            Duration::from_millis(10),
            move || {
                let _ = tx.send(());
            },
        )
        .unwrap();
        std::fs::write(&f, "bb").unwrap();
        rx.recv_timeout(Duration::from_secs(5)).expect("change noticed");
        drop(w);
        // The thread ends and drops its sender, which closes the channel.
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while rx.recv_timeout(Duration::from_millis(50)) != Err(mpsc::RecvTimeoutError::Disconnected) {
            assert!(std::time::Instant::now() < end, "watcher thread did not stop");
        }
    }
}
